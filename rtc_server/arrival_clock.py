"""When did the user say it? Stream time (samples of microphone audio heard) mapped to the server's clock.

The VAD and the turn logic count time in samples; latency figures (the end-of-turn wait) need the
moment a given sample arrived. Anchoring sample 0 on the arrival of the first packet puts every
later moment off by however early or late that one packet was, and by whatever the sender's clock
has drifted since (a microphone's sample clock is not the server's). Here each sample is mapped to
its earliest arrival seen lately: the smallest (arrival - stream position) over the last two
windows, so one early burst or one late packet moves nothing, and a drifting sender is followed
within two windows.
"""
from __future__ import annotations

import time
from typing import Callable


class ArrivalClock:
    """Maps seconds of stream time to monotonic arrival time (no arrivals yet: now)."""

    def __init__(self, sample_rate: int, window_s: float = 10.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.sample_rate = sample_rate
        self.window_s = window_s
        self._now = now
        self._samples = 0
        self._window: int | None = None   # index of the window being measured
        self._current: float | None = None  # smallest offset in it
        self._previous: float | None = None  # smallest offset in the window before

    def heard(self, samples: int) -> None:
        """`samples` more of the stream have just arrived."""
        now = self._now()
        self._samples += samples
        offset = now - self._samples / self.sample_rate  # when stream time 0 was, by this arrival
        window = int(now // self.window_s)
        if window != self._window:
            self._previous = self._current if self._window == window - 1 else None
            self._window, self._current = window, offset
        elif offset < self._current:
            self._current = offset

    @property
    def offset(self) -> float | None:
        """The monotonic time of stream time 0, by the earliest arrivals lately (None before any)."""
        if self._current is None:
            return None
        return self._current if self._previous is None else min(self._current, self._previous)

    def at(self, t: float) -> float:
        """The monotonic time at which stream second `t` arrived (or would arrive, if still to come)."""
        offset = self.offset
        return (self._now() - self._samples / self.sample_rate if offset is None else offset) + t
