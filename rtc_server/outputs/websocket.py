"""A WebSocket client of a session: the face stream and the events out, microphone audio and
the data channel's JSON messages in; the whole conversation without WebRTC.

Server to client: one JSON `hello` ({"type": "hello", "session_id", "width", "height", "fps",
"audio_rate", "voice_ahead"}), then per tick one binary message (tracks/face_stream.py: TICK_HEADER,
the changed region as JPEG, the tick's audio), and the session's events as JSON text. A viseme
session's ticks carry no audio: each chunk of its voice goes in one voice message (VOICE_HEADER)
right after the chunk's cues, before it plays.
Client to server: JSON text as on the data channel (say, chat, interrupt), and binary messages
of microphone audio, int16 little-endian mono at 16 kHz, any length.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiohttp import WSMsgType, web

from rtc_server.outputs.base import Output
from tracks.face_stream import KIND_TICK, FaceStreamEncoder, FaceTick, downsample, voice_message

if TYPE_CHECKING:
    from rtc_server.session import Session

log = logging.getLogger(__name__)

MIC_RATE = 16_000
MAX_QUEUED_TICKS = 12  # about half a second: a slower socket drops ticks instead of falling behind


class _SocketChannel:
    """The socket seen as an events channel (EventChannel's shape: readyState, send, on)."""

    def __init__(self, client: "WebSocketClient") -> None:
        self._client = client

    @property
    def readyState(self) -> str:  # noqa: N802 (aiortc's name)
        return "open" if not self._client.ws.closed and self._client.state == "running" else "closed"

    def send(self, text: str) -> None:
        self._client.queue_text(text)

    def on(self, event: str, callback: Any) -> None:
        """Open from the start: nothing to wait for."""


class WebSocketClient(Output):
    """One browser (or any program) on `GET /sessions/{id}/ws`."""

    type = "websocket"

    def __init__(self, ws: web.WebSocketResponse, *, audio_rate: int = 24_000, quality: int = 80) -> None:
        super().__init__()
        self.ws = ws
        self.audio_rate = audio_rate
        self.quality = quality
        self.encoder: FaceStreamEncoder | None = None
        self.channel = _SocketChannel(self)
        self._outbox: deque[bytes | str] = deque()
        self._queued_ticks = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._mic_samples = 0
        self._mic_tb = Fraction(1, MIC_RATE)
        self.sent_bytes = 0
        self.voice_bytes = 0
        self.dropped_ticks = 0
        self.mic_bytes = 0

    async def open(self, session: "Session") -> None:
        await super().open(session)
        loop = asyncio.get_running_loop()
        renderer = session.renderer
        # Viseme mode: the voice goes ahead in voice messages (voice_ahead), the ticks stay silent.
        self.encoder = FaceStreamEncoder(
            renderer.width, renderer.height, session.config.fps, session.config.sample_rate,
            deliver=lambda tick: loop.call_soon_threadsafe(self._queue_tick, tick),
            quality=self.quality, audio_rate=self.audio_rate, carries_audio=renderer.draws_face)
        self.queue_text_json({"type": "hello", "session_id": session.id, "width": renderer.width,
                              "height": renderer.height, "fps": session.config.fps, "audio_rate": self.audio_rate,
                              "voice_ahead": not self.encoder.carries_audio})
        self._writer = asyncio.create_task(self._write(), name=f"{self.id}:writer")
        session.stream.attach(self.encoder)
        session.events.attach(self.channel)
        session.events.state(session.state)

    # ---- out -----------------------------------------------------------------------------

    def queue_text(self, text: str) -> None:
        self._outbox.append(text)
        self._wake.set()

    def queue_text_json(self, event: dict) -> None:
        import json

        self.queue_text(json.dumps(event))

    def _queue_tick(self, tick: FaceTick) -> None:
        if self.state != "running":
            return
        if self._queued_ticks >= MAX_QUEUED_TICKS:
            # The socket is slower than the clock: start over from a whole picture rather than
            # let the delay grow (what was queued would only arrive late).
            kept = [m for m in self._outbox if isinstance(m, str) or m[0] != KIND_TICK]
            self.dropped_ticks += self._queued_ticks
            self._outbox = deque(kept)
            self._queued_ticks = 0
            if self.encoder is not None:
                self.encoder.send_full_picture()
            return
        self._outbox.append(tick.message(self.audio_rate))
        self._queued_ticks += 1
        self._wake.set()

    def voice_ahead(self, utterance_id: str, start_tick: int, audio: np.ndarray) -> None:
        encoder = self.encoder
        if encoder is None or encoder.carries_audio or self.state != "running" or self.session is None:
            return
        audio = downsample(audio, encoder.step)
        message = voice_message(utterance_id, start_tick / self.session.config.fps, audio, self.audio_rate)
        self._outbox.append(message)
        self.voice_bytes += len(message)
        self._wake.set()

    async def _write(self) -> None:
        try:
            while not self.ws.closed:
                while not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                message = self._outbox.popleft()
                if isinstance(message, bytes):
                    if message[0] == KIND_TICK:
                        self._queued_ticks -= 1
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
                self.sent_bytes += len(message)
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.info("%s: socket closed while sending (%s)", self.id, exc)

    # ---- in ------------------------------------------------------------------------------

    async def receive(self) -> None:
        """Read the client's messages until the socket closes (run by the route's handler)."""
        assert self.session is not None
        session = self.session
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                session.handle_message(message.data)
            elif message.type == WSMsgType.BINARY:
                self._hear(message.data)
            elif message.type == WSMsgType.ERROR:
                break

    def _hear(self, data: bytes) -> None:
        assert self.session is not None
        if len(data) % 2:
            self.session.report_error("mic", "microphone audio must be int16 samples (an even number of bytes)")
            return
        pcm = np.frombuffer(data, dtype="<i2")
        if not len(pcm):
            return
        self.mic_bytes += len(data)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE, self._mic_samples, self._mic_tb
        self._mic_samples += len(pcm)
        self.session.hear(frame)

    # ---- lifecycle -----------------------------------------------------------------------

    async def stop(self) -> None:
        if self.state == "stopped":
            return
        await super().stop()
        session = self.session
        if session is not None:
            if self.encoder is not None:
                session.stream.detach(self.encoder)
            session.events.detach(self.channel)
        if self.encoder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.encoder.close)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if not self.ws.closed:
            await self.ws.close()

    def stats(self) -> dict[str, Any]:
        encoder = self.encoder
        return {"sent_bytes": self.sent_bytes, "voice_bytes": self.voice_bytes, "dropped_ticks": self.dropped_ticks,
                "mic_bytes": self.mic_bytes,
                "encoder_dropped_ticks": encoder.stats.dropped if encoder is not None else 0,
                "jpeg_bytes": encoder.bytes_jpeg if encoder is not None else 0}
