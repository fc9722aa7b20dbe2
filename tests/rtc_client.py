"""A real aiortc peer that talks to the server the way the browser client does."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from fractions import Fraction

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket


class PcmTrack(MediaStreamTrack):
    """A microphone that plays int16 mono PCM (48 kHz) in real time, then silence."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray | None = None, sample_rate: int = 48_000) -> None:
        super().__init__()
        self.rate = sample_rate
        self.samples = 960
        self.pcm = pcm if pcm is not None else np.zeros(0, dtype=np.int16)
        self.pos = 0
        self.start: float | None = None
        self.count = 0
        self.played_at: float | None = None  # monotonic time the PCM's first sample was sent

    def play(self, pcm: np.ndarray) -> float:
        """Start playing `pcm` at the next packet; returns nothing useful until sent."""
        self.pcm = pcm
        self.pos = 0
        self.played_at = None
        return time.monotonic()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.count * self.samples / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.zeros(self.samples, dtype=np.int16)
        if self.pos < len(self.pcm):
            if self.pos == 0:
                self.played_at = time.monotonic()
            piece = self.pcm[self.pos : self.pos + self.samples]
            chunk[: len(piece)] = piece
            self.pos += self.samples
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.count * self.samples
        frame.time_base = Fraction(1, self.rate)
        self.count += 1
        return frame


@dataclass
class Received:
    """What arrived, with monotonic arrival times."""

    video_times: list[float] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)
    video_luma: list[np.ndarray] = field(default_factory=list)  # Y planes, if kept
    video_frames: list[np.ndarray] = field(default_factory=list)  # whole yuv420p frames, if kept
    video_size: tuple[int, int] | None = None
    audio_times: list[float] = field(default_factory=list)
    audio_pts: list[int] = field(default_factory=list)
    audio_samples: list[int] = field(default_factory=list)
    audio_chunks: list[np.ndarray] = field(default_factory=list)  # mono int16
    audio_rate: int = 48_000
    # First-packet arrival per RTP timestamp, before any jitter buffer: the wire timeline.
    wire: dict[str, dict[int, float]] = field(default_factory=lambda: {"audio": {}, "video": {}})
    # RTCP sender reports as (NTP seconds, RTP timestamp): how the sender maps media time to wall time.
    reports: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: {"audio": [], "video": []})

    def wire_time(self, kind: str, pts: int) -> float | None:
        """When the packet of a decoded frame first arrived.

        aiortc's receiver rebases timestamps on the first frame out of its jitter buffer,
        which is the first packet that arrived.
        """
        seen = self.wire[kind]
        if not seen:
            return None
        origin = next(iter(seen))
        return seen.get((origin + pts) % 2**32)

    def sender_time(self, kind: str, pts: int, rate: int) -> float | None:
        """The sender's wall time (NTP seconds) for a decoded frame, by its latest RTCP report."""
        seen, reports = self.wire[kind], self.reports[kind]
        if not seen or not reports:
            return None
        rtp = (next(iter(seen)) + pts) % 2**32
        ntp, report_rtp = reports[-1]
        ticks = (rtp - report_rtp + 2**31) % 2**32 - 2**31  # signed distance on the 32-bit clock
        return ntp + ticks / rate

    def audio(self) -> np.ndarray:
        return np.concatenate(self.audio_chunks) if self.audio_chunks else np.zeros(0, np.int16)


class AvatarClient:
    """Connects like static/client.html: audio sendrecv, video recvonly, an `events` channel."""

    def __init__(self, base_url: str, keep_video: bool = False, mic: MediaStreamTrack | None = None,
                 keep_frames: bool = False, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key  # the server's --api-key, sent with the offer
        self.keep_video = keep_video
        self.keep_frames = keep_frames  # whole pictures too (for face re-detection); costs memory
        self.mic = mic or PcmTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received = Received()
        self.events: list[tuple[float, dict]] = []
        self.session_id: str | None = None
        self.token: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._event_waiters: list[tuple[callable, asyncio.Future]] = []
        self.channel = None
        self.http: aiohttp.ClientSession | None = None

    async def connect(self, **offer_fields) -> dict:
        self.http = aiohttp.ClientSession()
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.pc.addTransceiver("video", direction="recvonly")
        for transceiver in self.pc.getTransceivers():
            self._watch_wire(transceiver.receiver, transceiver.kind)
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_event)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **offer_fields}
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        async with self.http.post(self.base_url + "/offer", json=body, headers=headers) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused: {resp.status} {answer}")
        self.session_id, self.token = answer["session_id"], answer["token"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def watch(self, session_id: str, token: str) -> dict:
        """Join an existing session as a viewer: audio and video recvonly, no microphone."""
        self.http = aiohttp.ClientSession()
        self.session_id, self.token = session_id, token
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        for transceiver in self.pc.getTransceivers():
            self._watch_wire(transceiver.receiver, transceiver.kind)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with self.http.post(f"{self.base_url}/sessions/{session_id}/viewers", json=body,
                                  headers=self.auth()) as resp:
            answer = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"viewer refused: {resp.status} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    def _watch_wire(self, receiver, kind: str) -> None:
        """Note when each RTP timestamp first arrives (test instrumentation, not a stand-in)."""
        handle = receiver._handle_rtp_packet
        seen = self.received.wire[kind]

        async def timed(packet, arrival_time_ms: int) -> None:
            seen.setdefault(packet.timestamp, time.monotonic())
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = timed

        handle_rtcp = receiver._handle_rtcp_packet
        reports = self.received.reports[kind]

        async def reported(packet) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                reports.append((info.ntp_timestamp / 2**32, info.rtp_timestamp))
            await handle_rtcp(packet)

        receiver._handle_rtcp_packet = reported

    def _on_event(self, message: str) -> None:
        event = json.loads(message)
        self.events.append((time.monotonic(), event))
        for predicate, fut in list(self._event_waiters):
            if not fut.done() and predicate(event):
                fut.set_result(event)

    async def wait_event(self, predicate, timeout: float = 30.0, since: int = 0) -> dict:
        """The first event (from index `since` of self.events on) that predicate accepts, waiting for it."""
        for _, event in self.events[since:]:
            if predicate(event):
                return event
        fut = asyncio.get_running_loop().create_future()
        self._event_waiters.append((predicate, fut))
        return await asyncio.wait_for(fut, timeout)

    async def wait_new_event(self, predicate, timeout: float = 30.0) -> dict:
        fut = asyncio.get_running_loop().create_future()
        self._event_waiters.append((predicate, fut))
        return await asyncio.wait_for(fut, timeout)

    def _on_track(self, track) -> None:
        reader = self._read_video if track.kind == "video" else self._read_audio
        self._tasks.append(asyncio.create_task(reader(track)))

    async def _read_video(self, track) -> None:
        r = self.received
        try:
            while True:
                frame = await track.recv()
                r.video_times.append(time.monotonic())
                r.video_pts.append(frame.pts)
                r.video_size = (frame.width, frame.height)
                if self.keep_video or self.keep_frames:
                    yuv = frame.to_ndarray(format="yuv420p")
                    # the Y plane as sent (to_ndarray(format="gray") would rescale to full range)
                    r.video_luma.append(yuv[: frame.height].copy())
                    if self.keep_frames:
                        r.video_frames.append(yuv)
        except MediaStreamError:
            pass

    async def _read_audio(self, track) -> None:
        r = self.received
        try:
            while True:
                frame = await track.recv()
                r.audio_times.append(time.monotonic())
                r.audio_pts.append(frame.pts)
                r.audio_rate = frame.sample_rate
                data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                r.audio_samples.append(data.shape[0])
                r.audio_chunks.append(data[:, 0].astype(np.int16))
        except MediaStreamError:
            pass

    async def wait_media(self, timeout: float = 20.0) -> None:
        """Until both video and audio frames flow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received.video_times) > 5 and len(self.received.audio_times) > 10:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"media did not arrive: {len(self.received.video_times)} video, "
                           f"{len(self.received.audio_times)} audio frames")

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, dict | None]:
        assert self.http is not None
        headers = {**self.auth(), **kwargs.pop("headers", {})}
        async with self.http.request(method, self.base_url + path, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body

    async def say(self, text: str) -> str:
        status, body = await self.request("POST", f"/sessions/{self.session_id}/say", json={"text": text})
        assert status == 202, (status, body)
        return body["utterance_id"]

    async def speech_end(self, utterance_id: str, timeout: float = 30.0) -> dict:
        """The speech_end event of `utterance_id` (waits for it)."""
        return await self.wait_event(
            lambda e: e.get("type") == "speech_end" and e["utterance_id"] == utterance_id, timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        if self.http is not None:
            await self.http.close()
