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


def tighten(chunk: SpeechChunk, head: bool = False, tail: bool = False, keep_s: float = 0.02) -> SpeechChunk:
    """Cut the sentence pause a TTS puts before (`head`) or after (`tail`) a chunk down to `keep_s`.

    Used where one sentence was synthesized as two chunks: without it the join would carry a
    full sentence-end plus sentence-start pause (~150 ms with Piper). Needs phoneme timings;
    a chunk without them is returned unchanged.
    """
    if not chunk.phonemes or not (head or tail):
        return chunk
    start, end = 0.0, chunk.duration
    if head and chunk.phonemes[0].phoneme in LEAD_IN:
        start = max(0.0, chunk.phonemes[0].end - keep_s)
    if tail and chunk.phonemes[-1].phoneme in LEAD_OUT:
        end = min(end, chunk.phonemes[-1].start + keep_s)
    if start == 0.0 and end == chunk.duration:
        return chunk
    rate = chunk.sample_rate
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
