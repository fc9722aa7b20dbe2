"""A spoken turn whose answer has not been heard yet, and may still be taken back.

The end of a turn is a guess made in a pause: the user may go on ("I'd like to book... a table for
two"). Until the first frame of the answer leaves on the clock nobody has heard it, so a guess
that was wrong costs nothing but the work begun: the turn is withdrawn and the user's words carry
on as one turn. For that the turn keeps what it would show the client (its final transcript, the
reply as it is written) until the answer is on air, then sends it in order; a withdrawn turn
sends none of it.

A turn may also be held: ended at once (its words recognised, its answer written and synthesized)
but not heard before the user has been silent a while longer (allow_answer), because the end was
uncertain. The user going on in that time withdraws it; the work done meanwhile is what the wait
no longer costs.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Protocol


class EventSink(Protocol):
    def send(self, event: dict) -> None: ...


class PendingTurn:
    """The events of one spoken turn, held until its answer is heard (release) or dropped (withdraw)."""

    def __init__(self, events: EventSink, held: bool = False) -> None:
        self._events = events
        self._may_answer = asyncio.Event()
        if not held:
            self._may_answer.set()
        # Events to send and callbacks to run, in order; None once released: they then happen at once.
        self._held: list[dict | Callable[[], None]] | None = []
        self.withdrawn = False

    @property
    def heard(self) -> bool:
        """The answer (or the turn's end, when it has none to speak) has reached the client."""
        return self._held is None

    @property
    def answer_held(self) -> bool:
        return not self._may_answer.is_set()

    def allow_answer(self) -> None:
        """The silence the turn was held for has passed: its answer may be heard."""
        self._may_answer.set()

    async def may_answer(self) -> None:
        """Returns once the answer may go on air."""
        await self._may_answer.wait()

    def send(self, event: dict) -> None:
        self._do(event)

    def on_heard(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the turn is heard (now if it is); never if it is withdrawn."""
        self._do(callback)

    def _do(self, item: dict | Callable[[], None]) -> None:
        if self.withdrawn:
            return
        if self._held is not None:
            self._held.append(item)
        elif callable(item):
            item()
        else:
            self._events.send(item)

    def release(self) -> None:
        """The answer is on air (or the turn ended without one): what it held happens now, in order."""
        if self._held is None or self.withdrawn:
            return
        held, self._held = self._held, None
        for item in held:
            self._do(item)

    def withdraw(self) -> bool:
        """Take the turn back before anything of it was heard; False when it is too late for that."""
        if self._held is None:
            return False
        self.withdrawn = True
        self._held = []
        return True
