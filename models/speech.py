"""Speech as it travels from a voice (TTS or user audio) to the lip-sync renderer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    """One phoneme as spoken: an IPA symbol and its span in seconds from the chunk start."""

    phoneme: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """A stretch of speech (usually one sentence) ready to be shown and heard.

    audio is int16 mono at sample_rate. phonemes is None when the audio came without
    timings (a user's WAV, an external TTS); renderers then read the mouth from the audio.
    """

    text: str
    audio: np.ndarray
    sample_rate: int
    phonemes: tuple[PhonemeTiming, ...] | None = None

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


# Alignment symbols a TTS puts at the start and end of every chunk: the pause around a sentence.
LEAD_IN = frozenset({"^"})
LEAD_OUT = frozenset({"$"})
_FADE_S = 0.005
# Sound at or above this (-50 dBFS) is voice; Piper's pauses lie near -85 dBFS. A head is cut from the
# sound, not from the "^" mark: Piper's alignment puts the first sound anywhere from ~45 ms before the
# end of "^" to ~10 ms after it, so a cut at the mark could clip a soft first consonant.
VOICE_LEVEL = int(32768 * 10 ** (-50 / 20))


def first_sound(audio: np.ndarray) -> int | None:
    """Index of the first int16 sample at VOICE_LEVEL or louder (None: the audio is silent)."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) >= VOICE_LEVEL)
    return int(loud[0]) if loud.size else None


def tighten(chunk: SpeechChunk, head: bool = False, tail: bool = False, keep_s: float = 0.02) -> SpeechChunk:
    """Cut the sentence pause a TTS puts before (`head`) or after (`tail`) a chunk (its "^"/"$") down
    to `keep_s` before its first sound (after its "$" mark or its last sound, whichever is later).

    Used where one sentence was synthesized as two chunks: without it the join would carry a
    full sentence-end plus sentence-start pause (~150 ms with Piper). Needs phoneme timings;
    a chunk without them is returned unchanged.
    """
    if not chunk.phonemes or not (head or tail):
        return chunk
    start, end = 0.0, chunk.duration
    rate = chunk.sample_rate
    sound = np.flatnonzero(np.abs(chunk.audio.astype(np.int32)) >= VOICE_LEVEL)
    if head and chunk.phonemes[0].phoneme in LEAD_IN:
        first_sound = sound[0] / rate if sound.size else chunk.phonemes[0].end
        start = max(0.0, first_sound - keep_s)
    if tail and chunk.phonemes[-1].phoneme in LEAD_OUT:
        # The end keeps to the "$" mark as well: a phrase's last sound may fade out below the threshold.
        last_sound = (sound[-1] + 1) / rate if sound.size else chunk.phonemes[-1].start
        end = min(end, max(chunk.phonemes[-1].start, last_sound) + keep_s)
    if start == 0.0 and end == chunk.duration:
        return chunk
    audio = chunk.audio[int(round(start * rate)) : int(round(end * rate))].astype(np.float32)
    fade = min(len(audio) // 2, int(_FADE_S * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        if start > 0.0:
            audio[:fade] *= ramp
        if end < chunk.duration:
            audio[-fade:] *= ramp[::-1]
    duration = len(audio) / rate
    phonemes = tuple(
        PhonemeTiming(p.phoneme, max(0.0, p.start - start), min(duration, p.end - start))
        for p in chunk.phonemes
        if p.end - start > 0.0 and p.start - start < duration
    )
    return SpeechChunk(text=chunk.text, audio=audio.astype(np.int16), sample_rate=rate, phonemes=phonemes)
