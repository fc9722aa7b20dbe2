"""A spoken turn holds what it shows until its answer is heard; withdrawn, it shows nothing."""
from __future__ import annotations

from rtc_server.pending_turn import PendingTurn


class Recorder:
    def __init__(self) -> None:
        self.seen: list = []

    def send(self, event: dict) -> None:
        self.seen.append(event)


def test_held_events_and_callbacks_happen_in_order_once_heard():
    sink = Recorder()
    turn = PendingTurn(sink)
    turn.send({"n": 1})
    turn.on_heard(lambda: sink.seen.append("remembered"))
    turn.send({"n": 2})
    assert sink.seen == [] and not turn.heard
    turn.release()
    assert sink.seen == [{"n": 1}, "remembered", {"n": 2}] and turn.heard
    turn.send({"n": 3})
    turn.on_heard(lambda: sink.seen.append("at once"))
    turn.release()
    assert sink.seen[3:] == [{"n": 3}, "at once"]


def test_a_withdrawn_turn_shows_and_keeps_nothing():
    sink = Recorder()
    turn = PendingTurn(sink)
    turn.send({"n": 1})
    turn.on_heard(lambda: sink.seen.append("remembered"))
    assert turn.withdraw()
    turn.send({"n": 2})
    turn.on_heard(lambda: sink.seen.append("late"))
    turn.release()
    assert sink.seen == [] and turn.withdrawn


def test_a_heard_turn_cannot_be_withdrawn():
    sink = Recorder()
    turn = PendingTurn(sink)
    turn.send({"n": 1})
    turn.release()
    assert not turn.withdraw() and not turn.withdrawn
    turn.send({"n": 2})
    assert sink.seen == [{"n": 1}, {"n": 2}]
