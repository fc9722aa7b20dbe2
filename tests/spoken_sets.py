"""Spoken test material for recognition and turn-taking: questions, voices, sentences with a pause.

Voices are espeak-ng variants, unlike the avatar's Piper voice. The questions end on short, weak
words as often as people's do ("...of France?", "...two plus two?"), where a recognizer or an
end of turn that clips the tail loses a word.
"""
from __future__ import annotations

import re

import numpy as np

VOICES = ("en-us+m3", "en-us+f3", "en-gb+m1")

QUESTIONS = (
    # The first 14 are bench/bench_voice_latency.py's, in its order.
    "What time is it?",
    "Tell me a joke.",
    "What is your name?",
    "How are you today?",
    "Where do you live?",
    "What is the weather like?",
    "Can you help me?",
    "What day is it today?",
    "Do you like music?",
    "Who made you?",
    "What can you do?",
    "Tell me about the moon.",
    "What is your favorite color?",  # Whisper writes US spelling: a British one would count as two errors
    "How old are you?",
    "What is the capital of France?",
    "What is two plus two?",
    "Is it going to rain tomorrow?",
    "What is the biggest animal in the sea?",
    "How far away is the sun?",
    "Can you sing a song for me?",
    "Where can I buy a coffee?",
    "What should I cook for dinner?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "Please turn off the lights.",
    "Who wrote the first book?",
    "What is the fastest car in the world?",
    "Do you know any good films?",
    "How do I get to the station?",
    "Can you speak more slowly?",
    "Where is the nearest hospital?",
    "What is the name of this building?",
)

# A sentence said with a hesitation in it: (before the pause, after it). People hesitate before
# a content word, after one that cannot end the sentence ("the capital of... France").
PAUSED = (
    ("What is the capital of", "France?"),
    ("I would like to book a", "table for two."),
    ("Can you tell me about", "the moon?"),
    ("What I would really like is a", "holiday by the sea."),
    ("I was wondering if", "you could help me."),
    ("Could you give me the", "weather for tomorrow?"),
    ("Please remind me to", "call my mother."),
    ("What is the best way to", "learn French?"),
    ("I need a table for", "two people tonight."),
    ("Tell me something about", "the history of Rome."),
)
PAUSES_MS = (300, 500, 700, 900)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers written out ("2" -> "two"): for comparing transcripts."""
    from num2words import num2words

    out = []
    for word in re.findall(r"[a-z0-9']+", text.lower().replace("-", " ")):
        out.extend(num2words(int(word)).replace("-", " ").split() if word.isdigit() else [word])
    return out


def normalise(text: str) -> str:
    return " ".join(words(text))


def paused_sentence(first: str, second: str, pause_ms: float, voice: str) -> tuple[np.ndarray, float]:
    """The sentence said in one breath with a pause of about pause_ms between its halves (an SSML break,
    so the voice keeps the sentence's melody), and the silence's real length in ms."""
    from tests.speech_samples import SAMPLE_RATE, espeak

    audio = espeak(f"<speak>{first} <break time='{int(pause_ms)}ms'/> {second}</speak>", voice, ssml=True)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    gaps = np.diff(loud)
    return audio, float(gaps.max() * 1000 / SAMPLE_RATE)
