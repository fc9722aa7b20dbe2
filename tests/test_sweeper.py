"""What closed sessions leave in reference cycles is freed soon after they close (fast tier).

The case that made it needed: aiortc's peer objects refer to each other (connection, transceivers,
senders, tracks), so a closed session's audio track, its Opus encoder and the two FFmpeg threads
of the encoder's resampler stay until a full garbage collection.
"""
from __future__ import annotations

import asyncio
import gc
import os

import numpy as np

from rtc_server.sweeper import Sweeper
from tracks.opus import OpusPacketizer


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Track:
    """A sender's track as aiortc holds it: it and its sender point at each other."""

    def __init__(self) -> None:
        self.opus = OpusPacketizer(48_000, 960)
        self.sender = {"track": self}


def encoder_left_behind() -> int:
    """Use a track's Opus encoder once and drop the track, as a closed session does; the threads
    left running."""
    before = threads()
    track = Track()
    track.opus.encode(np.full(960, 1000, np.int16), 0)
    gc.collect()  # a session's objects are old when it closes: past the young generations
    del track
    return threads() - before


async def test_a_sweep_after_sessions_close_frees_their_encoders_threads():
    durations: list[float] = []
    sweeper = Sweeper(delay_s=0.05, on_sweep=durations.append)
    gc.collect()
    start = threads()
    sweeper.freeze()
    try:
        left = encoder_left_behind() + encoder_left_behind()
        assert left > 0, "the encoder no longer leaves threads behind: is the sweeper still needed?"
        sweeper.session_closed()
        sweeper.session_closed()    # two closes, one sweep
        assert threads() == start + left, "nothing is swept before the delay"
        await asyncio.sleep(0.3)
        assert sweeper.stats.sweeps == 1 and sweeper.stats.collected > 0 and len(durations) == 1
        assert threads() == start
    finally:
        sweeper.close()
        gc.unfreeze()


async def test_without_frozen_models_a_close_sweeps_nothing():
    """A full collection of an unfrozen heap would stall every clock: Python's own schedule stays."""
    sweeper = Sweeper(delay_s=0.01)
    sweeper.session_closed()
    await asyncio.sleep(0.1)
    assert sweeper.stats.sweeps == 0
