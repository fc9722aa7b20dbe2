"""The bounded queue between the renderer (ahead of time) and the clock (on time)."""
from __future__ import annotations

import asyncio
from collections import deque

from tracks.avframe import AVFrame


class FrameQueue:
    """Holds at most `capacity` AVFrames; producers wait for room, the clock never waits.

    `clear()` bumps a generation number so that a producer waiting for room with a frame
    of a cancelled utterance cannot slip it in afterwards.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._frames: deque[AVFrame] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self.generation = 0
        self._put_listeners: list[asyncio.Event] = []

    def __len__(self) -> int:
        return len(self._frames)

    async def put(self, frame: AVFrame, generation: int | None = None) -> bool:
        """Wait for room and enqueue; False (frame dropped) if cleared since `generation`."""
        gen = self.generation if generation is None else generation
        while gen == self.generation and len(self._frames) >= self.capacity:
            self._room.clear()
            await self._room.wait()
        if gen != self.generation:
            return False
        self._frames.append(frame)
        for listener in self._put_listeners:
            listener.set()
        return True

    def wake_on_put(self, event: asyncio.Event) -> None:
        """Set `event` whenever a frame is queued (the clock resting between ticks waits on it)."""
        self._put_listeners.append(event)

    def peek(self) -> tuple[AVFrame, ...]:
        """The queued frames, oldest first, left in the queue."""
        return tuple(self._frames)

    def holds(self, utterance_id: str) -> bool:
        return any(f.utterance_id == utterance_id for f in self._frames)

    def get_nowait(self) -> AVFrame | None:
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._room.set()
        return frame

    def clear(self) -> list[AVFrame]:
        """Drop every queued frame (barge-in, interrupt); returns what was dropped."""
        dropped = list(self._frames)
        self._frames.clear()
        self.generation += 1
        self._room.set()
        return dropped
