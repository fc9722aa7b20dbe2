"""Reading the sync-test pattern back out of any container PyAV opens (HLS segments, an MP4
recording, an RTMP stream): when each white flash shows and each beep sounds, in media time."""
from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np


@dataclass
class Marks:
    flashes: list[float] = field(default_factory=list)  # seconds: first white frame of each flash
    beeps: list[float] = field(default_factory=list)    # seconds: first loud sample of each beep
    video_times: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    video_size: tuple[int, int] | None = None

    @property
    def fps(self) -> float:
        """Frames per second of media time, from the first to the last frame."""
        times = self.video_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    def offsets_ms(self, tolerance: float = 0.5) -> list[float]:
        """beep minus flash (ms) for each flash that has a beep within `tolerance` seconds."""
        out = []
        for flash in self.flashes:
            near = [b for b in self.beeps if abs(b - flash) < tolerance]
            if near:
                out.append(round((min(near, key=lambda b: abs(b - flash)) - flash) * 1000, 1))
        return out


def read_marks(container: av.container.InputContainer, max_seconds: float | None = None) -> Marks:
    """Decode `container` (up to `max_seconds` of video) and find the marks."""
    marks = Marks()
    streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
    bright = False
    loud_until = -1.0
    for frame in container.decode(*streams):
        if frame.time is None:
            continue
        if isinstance(frame, av.VideoFrame):
            luma = frame.to_ndarray(format="gray")
            marks.video_size = (frame.width, frame.height)
            marks.video_times.append(frame.time)
            white = float(luma.mean()) > 128
            if white and not bright:
                marks.flashes.append(frame.time)
            bright = white
            if max_seconds is not None and frame.time - marks.video_times[0] > max_seconds:
                break
        else:
            pcm = frame.to_ndarray().astype(np.float32)
            pcm = pcm.reshape(-1) if pcm.shape[0] == 1 else pcm.mean(axis=0)
            if frame.format.name in ("s16", "s16p"):
                pcm = pcm / 32768.0
            marks.audio_seconds += len(pcm) / frame.sample_rate
            loud = np.flatnonzero(np.abs(pcm) > 0.2)
            if len(loud):
                first = frame.time + loud[0] / frame.sample_rate
                if first > loud_until:
                    marks.beeps.append(first)
                loud_until = frame.time + (loud[-1] + 1) / frame.sample_rate + 0.3
    return marks
