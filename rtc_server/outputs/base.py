"""What every output of a session is: something that takes the session's ticks (or events)
somewhere, can be stopped on its own, and reports its state and stats."""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from rtc_server.session import Session


class OutputError(ValueError):
    """An output cannot be created as asked (bad URL, bad offer, unknown type)."""


class Output:
    """One way out of a session. Subclasses set `type` and implement open/stop/stats."""

    type: str = "output"

    def __init__(self) -> None:
        self.id = f"{self.type}-{secrets.token_hex(4)}"
        self.session: "Session | None" = None
        self.state = "new"

    async def open(self, session: "Session") -> None:
        """Start taking the session's output; raise OutputError when that is impossible."""
        self.session = session
        self.state = "running"

    async def stop(self) -> None:
        """Stop and release everything (idempotent); the session goes on."""
        self.state = "stopped"

    def voice_ahead(self, utterance_id: str, start_tick: int, audio: np.ndarray) -> None:
        """A viseme session's voice, one chunk (int16 at the session's rate, whole ticks from
        `start_tick`) before it plays; only outputs whose ticks carry no audio take it."""

    def stats(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """What POST answers and GET /sessions/{id} lists; subclasses add their URLs."""
        return {"id": self.id, "type": self.type, "state": self.state, "stats": self.stats()}
