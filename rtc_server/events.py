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
    """Sends server events to every attached channel (data channels, sockets); keeps a backlog
    for a channel that is not open yet, and the last few events for GET /sessions/{id}."""

    def __init__(self, backlog: int = 64) -> None:
        self._channels: list[Any] = []
        self._pending: deque[str] = deque(maxlen=backlog)  # sent before any channel was open
        self.sent: list[dict] = []
        self._sent_max = 20

    def attach(self, channel: Any) -> None:
        """Add a channel with aiortc's shape: `readyState`, `send(str)`, `on("open", ...)`."""
        self._channels.append(channel)
        if channel.readyState == "open":
            self._flush(channel)
        else:
            channel.on("open", lambda: self._flush(channel))

    def detach(self, channel: Any) -> None:
        if channel in self._channels:
            self._channels.remove(channel)

    def _flush(self, channel: Any) -> None:
        while self._pending and channel.readyState == "open":
            self._send_to(channel, self._pending.popleft())

    @staticmethod
    def _send_to(channel: Any, text: str) -> None:
        try:
            channel.send(text)
        except Exception as exc:  # a closing channel must not break the caller
            log.debug("event dropped: %s", exc)

    def send(self, event: dict) -> None:
        text = json.dumps(event, ensure_ascii=False)
        self.sent.append(event)
        if len(self.sent) > self._sent_max:
            del self.sent[0]
        open_channels = [c for c in self._channels if c.readyState == "open"]
        for channel in open_channels:
            self._send_to(channel, text)
        if not open_channels:
            self._pending.append(text)

    def state(self, state: State) -> None:
        self.send({"type": "state", "state": state})

    def error(self, message: str) -> None:
        self.send({"type": "error", "message": message})
