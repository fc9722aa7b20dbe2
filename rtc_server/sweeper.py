"""Frees what closed sessions leave in reference cycles soon after they close.

aiortc's peer objects refer to each other (connection, transceivers, senders, tracks), so a closed
session's WebRTC side, its audio track with its Opus encoder among it, is freed only by Python's
cyclic collector, and with the encoder a pool of FFmpeg threads (its resampler's filter graph: two
on a 2-core machine) and a few MB. With the models loaded a full collection scans about 230,000
objects (107-130 ms on 2 cores: bench/bench_endurance.py gc), so Python runs one rarely, and
every one stalls the clock of every live session: after 60 connect cycles 30 such threads and
60 MB were still waiting for one. Frozen, a sweep took 12 ms on average over 200 cycles
(bench_endurance.py cycles).

So: once the models are loaded, `freeze()` moves everything alive into the permanent
generation that collections skip; then a full collection only scans what sessions made since,
and one runs a little after sessions close (coalesced), instead of whenever Python gets to it.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


def malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


@dataclass
class SweepStats:
    sweeps: int = 0
    collected: int = 0         # objects found unreachable, all sweeps


class Sweeper:
    """Runs a full garbage collection `delay_s` after a session closes (one for several closes)."""

    def __init__(self, delay_s: float = 2.0, on_sweep: Callable[[float], None] | None = None) -> None:
        """on_sweep: gets each sweep's duration in seconds (the /metrics histogram)."""
        self.delay_s = delay_s
        self.on_sweep = on_sweep
        self.frozen = False
        self.stats = SweepStats()
        self._pending: asyncio.TimerHandle | None = None
        # What the collection freed goes back to the system: glibc keeps freed blocks of a closed
        # session's many small objects in its per-thread arenas otherwise.
        self._trim = malloc_trim()

    def freeze(self) -> None:
        """Everything alive now (the models, the code) is never scanned again; sweeps start."""
        gc.collect()
        gc.freeze()
        self.frozen = True
        log.info("garbage collection: %d objects of the loaded models frozen; closed sessions are swept "
                 "%.0f s after they close", gc.get_freeze_count(), self.delay_s)

    def session_closed(self) -> None:
        # Unfrozen (models handed in by a test, or still loading), a full collection would scan
        # everything and stall every clock: Python's own schedule is left alone.
        if not self.frozen or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self.delay_s, self.sweep)

    def sweep(self) -> int:
        """One full collection now; returns the number of unreachable objects found."""
        self._pending = None
        start = time.perf_counter()
        found = gc.collect()
        if self._trim is not None:
            self._trim()
        took = time.perf_counter() - start  # the event loop, and every clock, waited this long
        if self.on_sweep is not None:
            self.on_sweep(took)
        self.stats.sweeps += 1
        self.stats.collected += found
        log.debug("swept %d unreachable objects in %.1f ms", found, took * 1000)
        return found

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
