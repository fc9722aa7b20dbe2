"""The end-of-turn verdict from a paused utterance's words and Smart Turn's probability (no models)."""
from __future__ import annotations

import pytest

from models.turn import Verdict, judge, words_unfinished


@pytest.mark.parametrize("text", [
    "What is the capital of", "I would like to book a", "Can you tell me about", "I was wondering if",
    "Please remind me to", "I need a table for", "My favourite food is...", "Well, um", "So I'd",
    "and then,", "WHAT IS THE CAPITAL OF",
])
def test_a_sentence_left_hanging_is_unfinished(text):
    assert words_unfinished(text)


@pytest.mark.parametrize("text", [
    "What is the capital of France?", "What is two plus two?", "What is the weather like?", "Thank you",
    "Yes, I do.", "Yes it is.", "Turn the lights on.", "Can you tell me?", "", "   ", "A table for 2",
])
def test_a_sentence_that_can_end_there_is_not_unfinished(text):
    assert not words_unfinished(text)


def test_other_languages_are_judged_by_punctuation_only():
    assert not words_unfinished("Wie spät ist es auf der", language="de")
    assert words_unfinished("Ich möchte gern...", language="de")
    assert words_unfinished("What is the capital of", language=None)  # undetected: judged as English


def test_the_words_and_the_voice_decide_together():
    # Words hanging: unfinished whatever the voice says (Smart Turn scores espeak fragments 0.98).
    assert judge("What is the capital of", 0.98, 0.5).verdict is Verdict.UNFINISHED
    assert judge("What is the capital of", 0.98, 0.5).reason == "words"
    # Words and voice agree: finished.
    done = judge("What is two plus two?", 0.7, 0.5)
    assert (done.verdict, done.reason, done.probability) == (Verdict.COMPLETE, "words+voice", 0.7)
    # They disagree: unsure (the ordinary silence decides).
    assert judge("What is two plus two?", 0.2, 0.5).verdict is Verdict.UNSURE
    # No stop at the end: Whisper did not hear a finished sentence ("...to book a" heard as "...to locate").
    assert judge("I would like to locate", 0.9, 0.5).verdict is Verdict.UNSURE
    assert judge("What is two plus two?", None, 0.5).verdict is Verdict.UNSURE
    # No words at all (a cough): let the turn end, it will be dropped.
    assert judge("", 0.1, 0.5).verdict is Verdict.COMPLETE
    # The threshold is the caller's.
    assert judge("Tell me a joke.", 0.6, 0.7).verdict is Verdict.UNSURE


@pytest.mark.slow
def test_smart_turn_loads_from_pipecat_and_scores_audio():
    import numpy as np

    from models.turn import SmartTurnModel
    from tests.speech_samples import espeak, silence

    model = SmartTurnModel()
    assert model.model_path.name.startswith("smart-turn-v3") and "pipecat" in model.model_path.parts
    speech = np.concatenate([espeak("Tell me a joke."), silence(0.2)])
    p = model.probability(speech)
    assert 0.0 <= p <= 1.0
    assert model.probability(speech) == pytest.approx(p), "the same audio gets the same verdict"
    assert model.probability(np.zeros(0, np.float32)) == 0.0
