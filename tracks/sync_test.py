"""The calibration pattern: a 100 ms 1 kHz beep every 2 s, the video of those ticks white."""
from __future__ import annotations

import numpy as np

from tracks.avframe import AVFrame

PERIOD_S = 2.0
BEEP_S = 0.100
BEEP_HZ = 1000.0
BEEP_AMPLITUDE = 0.5


def solid_yuv(width: int, height: int, luma: int) -> np.ndarray:
    """A grey-level yuv420p frame (neutral chroma)."""
    frame = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    frame[:height] = luma
    return frame


class SyncTestPattern:
    """Idle source for sync-test sessions: dark frames and silence except the marks."""

    def __init__(self, width: int, height: int, fps: int, sample_rate: int) -> None:
        self.fps = fps
        self.samples_per_tick = sample_rate // fps
        self.period_ticks = round(PERIOD_S * fps)
        beep_samples = round(BEEP_S * sample_rate)
        t = np.arange(beep_samples) / sample_rate
        beep = np.sin(2 * np.pi * BEEP_HZ * t) * BEEP_AMPLITUDE * 32767
        # The beep starts exactly at the first sample of the marked tick.
        span = -(-beep_samples // self.samples_per_tick)
        audio = np.zeros(span * self.samples_per_tick, dtype=np.int16)
        audio[:beep_samples] = beep.astype(np.int16)
        self._beep_ticks = [audio[i * self.samples_per_tick : (i + 1) * self.samples_per_tick] for i in range(span)]
        self._silence = np.zeros(self.samples_per_tick, dtype=np.int16)
        self._dark = solid_yuv(width, height, 16)
        self._white = solid_yuv(width, height, 235)

    def idle(self, tick: int) -> AVFrame:
        phase = tick % self.period_ticks
        if phase < len(self._beep_ticks):
            return AVFrame(video=self._white, audio=self._beep_ticks[phase])
        return AVFrame(video=self._dark, audio=self._silence)
