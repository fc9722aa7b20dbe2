"""The media clock: one t0 per session, tick n is due at t0 + n / fps."""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class MediaClock:
    """Monotonic tick arithmetic shared by every sink of one session.

    `now` and `sleep` are the time source; tests pass a fake pair to run the clock in no time.
    """

    def __init__(self, fps: int, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._now = now
        self._sleep = sleep
        self.t0: float | None = None

    def start(self) -> None:
        self.t0 = self._now()

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def due(self, tick: int) -> float:
        """Monotonic time at which `tick` is due."""
        assert self.t0 is not None, "clock not started"
        return self.t0 + tick / self.fps

    def current_tick(self) -> int:
        """The tick whose slot contains now (-1 before t0)."""
        assert self.t0 is not None, "clock not started"
        return int((self._now() - self.t0) * self.fps // 1)

    async def wait_for(self, tick: int) -> float:
        """Sleep until `tick` is due; return how late we woke (seconds, >= 0 when on time)."""
        delay = self.due(tick) - self._now()
        if delay > 0:
            await self._sleep(delay)
        return self._now() - self.due(tick)
