"""AVFrame: one video frame plus exactly 1/fps seconds of audio, produced together."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AVFrame:
    """video: yuv420p packed (h*3//2, w) uint8; audio: int16 mono, samples_per_tick long.

    utterance_id is None for idle frames. first/last mark the edges of an utterance so the
    clock can announce speech when it actually leaves.
    """

    video: np.ndarray
    audio: np.ndarray
    utterance_id: str | None = None
    first: bool = False
    last: bool = False

    @property
    def is_speech(self) -> bool:
        return self.utterance_id is not None
