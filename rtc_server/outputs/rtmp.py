"""RTMP push: the session's H.264 + AAC in FLV to a live platform or any RTMP server, with
reconnection (backoff 1, 2, 4 ... 15 s) when the server goes away. Its state is in GET
/sessions/{id} and in `output` events on the data channel."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable

import av

from rtc_server.outputs.base import OutputError
from rtc_server.outputs.h264 import FeedOutput
from tracks.h264_feed import EncodedPacket, H264Feed
from tracks.muxer import MuxWorker

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 15.0
IO_TIMEOUT_S = 5.0  # connecting to the server


def redact(url: str) -> str:
    """The URL without its stream key (the last path part), for logs and GET."""
    return re.sub(r"/[^/]*$", "/***", url)


class RtmpPush(MuxWorker):
    """Pushes FLV to `url` from its own thread; reconnects with backoff after any failure."""

    name = "rtmp"

    def __init__(self, feed: H264Feed, url: str, on_state: Callable[[str, str], None]) -> None:
        super().__init__(feed)
        self.url = url
        self._on_state = on_state
        self.state = "connecting"
        self.connects = 0
        self.failures = 0
        self._retry_at = 0.0
        self._backoff = 1.0

    def open_container(self) -> av.container.OutputContainer:
        # A server that accepts but stops reading blocks the writes of this thread only: its
        # backlog then overflows and this push drops its own packets (PacketWorker).
        return av.open(self.url, "w", format="flv", timeout=IO_TIMEOUT_S,
                       options={"flvflags": "no_duration_filesize"})

    def handle(self, packet: EncodedPacket) -> None:
        if self.container is None and time.monotonic() < self._retry_at:
            return  # waiting out the backoff: this push drops its own packets meanwhile
        first = self.container is None
        try:
            super().handle(packet)
        except Exception as exc:
            self._failed(exc)
            return
        if first and self.container is not None:
            self.connects += 1
            self._backoff = 1.0
            self._set_state("live", "connected" if self.connects == 1 else "reconnected")

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.close_container()
        self._origin = None  # a new connection is a new stream: it starts at 0
        self._retry_at = time.monotonic() + self._backoff
        self._set_state("reconnecting", f"{exc}; retrying in {self._backoff:.0f} s")
        self._backoff = min(MAX_BACKOFF_S, self._backoff * 2)
        self.resync()

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.state or state == "reconnecting":
            self.state = state
            self._on_state(state, detail)


class RtmpOutput(FeedOutput):
    """{"type": "rtmp", "url": "rtmp://host/app/key"}."""

    type = "rtmp"

    def __init__(self, url: str) -> None:
        super().__init__()
        if not re.match(r"^rtmps?://[^/\s]+/\S+$", url):
            raise OutputError("rtmp url must look like rtmp://host[:port]/app/stream-key")
        self.url = url
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, session) -> None:
        self._loop = asyncio.get_running_loop()
        await super().open(session)
        self.state = "connecting"

    def make_worker(self, feed: H264Feed) -> RtmpPush:
        return RtmpPush(feed, self.url, self._on_push_state)

    def _on_push_state(self, state: str, detail: str) -> None:
        """From the push thread: tell the log, and the session's clients on the loop."""
        log.info("rtmp %s to %s: %s (%s)", self.id, redact(self.url), state, detail)
        if self._loop is None or self.session is None:
            return
        session = self.session

        def announce() -> None:
            if self.state not in ("stopped",):
                self.state = state
                session.events.send({"type": "output", "id": self.id, "output": "rtmp", "state": state,
                                     "detail": detail})

        self._loop.call_soon_threadsafe(announce)

    def stats(self) -> dict[str, Any]:
        push = self.worker
        extra = {"connects": push.connects, "failures": push.failures} if isinstance(push, RtmpPush) else {}
        return {**super().stats(), **extra}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": redact(self.url)}
