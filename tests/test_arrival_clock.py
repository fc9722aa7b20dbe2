"""ArrivalClock on a fake clock: a moment of the user's speech is placed where its audio arrived."""
from __future__ import annotations

import random
from typing import Callable

import pytest

from rtc_server.arrival_clock import ArrivalClock

RATE = 16_000
PACKET = 320  # 20 ms


class Wire:
    """A sender of 20 ms packets (from stream time 0 at t=100 s on its own clock), each delivered 10 ms
    plus jitter after its last sample."""

    def __init__(self, clock: ArrivalClock, now: dict, sender_rate: float = 1.0) -> None:
        self.clock = clock
        self.now = now
        self.sender_rate = sender_rate  # sender seconds per real second (< 1: its clock runs slow)
        self.packets = 0

    def deliver(self, n: int, jitter_s: Callable | None = None, start: float = 100.0) -> None:
        """n packets, each arriving 10 ms (plus jitter) after its last sample was captured."""
        for _ in range(n):
            self.packets += 1
            sent = start + self.packets * 0.02 / self.sender_rate  # its last sample captured
            self.now["now"] = sent + 0.010 + (jitter_s() if jitter_s else 0.0)
            self.clock.heard(PACKET)

    def hand_over(self, n: int, at: float) -> None:
        """n packets arrive together at `at` (held back somewhere on the way)."""
        self.now["now"] = at
        for _ in range(n):
            self.packets += 1
            self.clock.heard(PACKET)


def make(window_s: float = 10.0) -> tuple[ArrivalClock, dict]:
    now = {"now": 0.0}
    return ArrivalClock(RATE, window_s=window_s, now=lambda: now["now"]), now


def test_before_any_audio_a_moment_is_placed_from_now() -> None:
    clock, now = make()
    now["now"] = 50.0
    assert clock.at(0.5) == pytest.approx(50.5)


def test_a_burst_of_early_packets_does_not_shift_later_moments() -> None:
    """The first packets queue up while the connection settles and come all at once, 60 ms late: the first
    arrival alone would place every later moment 60 ms late."""
    clock, now = make()
    wire = Wire(clock, now)
    wire.hand_over(4, at=100.0 + 4 * 0.02 + 0.010 + 0.060)
    rng = random.Random(1)
    wire.deliver(500, jitter_s=lambda: rng.uniform(0.0, 0.030))
    # stream second 3.0 was sent at 103.0 and could arrive, at the earliest, 10 ms later
    assert clock.at(3.0) == pytest.approx(103.010, abs=0.002)


def test_a_late_packet_moves_nothing() -> None:
    clock, now = make()
    wire = Wire(clock, now)
    wire.deliver(100)
    before = clock.at(1.0)
    wire.hand_over(1, at=now["now"] + 0.25)  # a 250 ms stall, then the backlog
    assert clock.at(1.0) == pytest.approx(before)


def test_a_sender_clock_running_slow_is_followed() -> None:
    """A sender 0.1 % slow puts each second of audio 1 ms later than the last; after a minute the
    mapping must have followed it, not stayed on the first arrivals."""
    clock, now = make(window_s=5.0)
    wire = Wire(clock, now, sender_rate=0.999)
    wire.deliver(3000)  # 60 s of audio
    t = wire.packets * PACKET / RATE
    assert clock.at(t) == pytest.approx(now["now"], abs=0.012)
