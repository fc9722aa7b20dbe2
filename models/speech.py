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
