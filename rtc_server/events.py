"""The `events` data channel: typed messages to the client, parsed messages from it."""
from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any, Literal, Union

from pydantic import BaseModel, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

State = Literal["idle", "listening", "thinking", "speaking"]


class SayMessage(BaseModel):
    type: Literal["say"]
    text: str


class ChatMessage(BaseModel):
    type: Literal["chat"]
    text: str


class InterruptMessage(BaseModel):
    type: Literal["interrupt"]


ClientMessage = Union[SayMessage, ChatMessage, InterruptMessage]
_client_message = TypeAdapter(ClientMessage)


class BadMessage(ValueError):
    """A client message that is not JSON or not one of say/chat/interrupt."""


def parse_client_message(raw: str | bytes) -> ClientMessage:
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    except RecursionError:
        raise BadMessage("JSON nested too deeply") from None
    try:
        return _client_message.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadMessage(
            f"expected {{\"type\": \"say\"|\"chat\", \"text\": ...}} or {{\"type\": \"interrupt\"}}: "
            f"{where} {first.get('msg', '')}".strip()
        ) from None


class EventChannel:
    """Sends server events on the `events` data channel; holds a few until it opens."""

    def __init__(self, backlog: int = 64) -> None:
        self._channel: Any = None
        self._pending: deque[str] = deque(maxlen=backlog)
        self.sent: list[dict] = []  # kept short: the last events, for GET /sessions/{id}
        self._sent_max = 20

    def attach(self, channel: Any) -> None:
        self._channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def _flush(self) -> None:
        while self._pending and self._is_open():
            self._channel.send(self._pending.popleft())

    def _is_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def send(self, event: dict) -> None:
        text = json.dumps(event, ensure_ascii=False)
        self.sent.append(event)
        if len(self.sent) > self._sent_max:
            del self.sent[0]
        if self._is_open():
            try:
                self._channel.send(text)
            except Exception as exc:  # a closing channel must not break the caller
                log.debug("event dropped: %s", exc)
        else:
            self._pending.append(text)

    def state(self, state: State) -> None:
        self.send({"type": "state", "state": state})

    def error(self, message: str) -> None:
        self.send({"type": "error", "message": message})
