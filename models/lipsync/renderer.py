"""The renderer interface: what the speech pipeline asks of any lip-sync renderer.

Frames are yuv420p planes packed in one uint8 array of shape (height * 3 // 2, width),
the layout `av.VideoFrame.from_ndarray(array, format="yuv420p")` takes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from models.speech import SpeechChunk


class FrameSource(ABC):
    """The frames of one speech chunk, rendered on demand in order."""

    n_frames: int
    # True: render() only hands out pictures already made, so it is called on the event loop
    # rather than paying a trip to the render thread for each batch.
    instant: bool = False

    @abstractmethod
    def render(self, start: int, count: int) -> list[np.ndarray]:
        """Render frames [start, start + count) of this chunk (blocking; call from a worker thread)."""


class LipSyncRenderer(ABC):
    """Draws the avatar: idle frames on the clock, speaking frames for speech chunks."""

    width: int
    height: int
    fps: int
    still_idle: bool = False  # True: idle_frame is the same picture at every tick
    # False: the client draws the face from mouth cues (viseme mode), so outputs that can send the
    # voice ahead of playback do, and send no pictures.
    draws_face: bool = True

    @abstractmethod
    def idle_frame(self, tick: int) -> np.ndarray:
        """The frame shown at clock tick `tick` when nothing is being said (cheap; may be cached)."""

    @abstractmethod
    def begin(self, speech: SpeechChunk, tick: int) -> FrameSource:
        """Prepare the frames of `speech`, expected to start showing at clock tick `tick`."""
