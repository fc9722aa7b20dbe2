"""A browser's WebRTC peer as a part of a session: microphone in, avatar audio and video and
the `events` data channel out. The peer that made the session owns it (its loss ends the
session); a viewer only watches (its loss removes just that viewer)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from rtc_server.mic_receiver import shorten_mic_jitter_buffer
from rtc_server.outputs.base import Output, OutputError
from rtc_server.peer_watch import wait_for_silence
from tracks.rtc import RtcSink
from tracks.sender_reports import report_due_times
from tracks.viewer_feed import ViewerTracks

if TYPE_CHECKING:
    from rtc_server.session import Session

log = logging.getLogger(__name__)


def only_vp8(pc: RTCPeerConnection, sender: Any) -> None:
    """Keep only VP8 (and its retransmission) on the video of `sender`, after the offer is set:
    the shared viewer packets are VP8. (aiortc applies setCodecPreferences while it reads the
    offer, before this transceiver exists, so its negotiated list is filtered instead.)"""
    for transceiver in pc.getTransceivers():
        if transceiver.sender is not sender:
            continue
        vp8 = [c for c in transceiver._codecs if c.mimeType.lower() == "video/vp8"]
        if not vp8:
            raise OfferError("a viewer's offer must accept VP8 video")
        kept = {c.payloadType for c in vp8}
        transceiver._codecs = [c for c in transceiver._codecs if c.payloadType in kept or (
            c.mimeType.lower() == "video/rtx" and int(c.parameters.get("apt", -1)) in kept)]


class OfferError(OutputError):
    """The browser's offer cannot be answered (malformed SDP, missing media)."""


class WebRtcPeer(Output):
    """One RTCPeerConnection fed by the session's clock.

    `owner`: the peer that created the session; its microphone is heard, and when it goes
    (closed, failed, silent, never connected) the whole session ends. A viewer (owner=False)
    answers recvonly, is never heard, and when it goes only this output is removed.
    """

    type = "webrtc"

    def __init__(self, sdp: str, kind: str = "offer", *, owner: bool = True,
                 ice_servers: list | None = None) -> None:
        super().__init__()
        if not owner:
            self.type = "viewer"
            self.id = "viewer-" + self.id.split("-", 1)[1]
        self.owner = owner
        self._offer = (sdp, kind)
        # STUN/TURN (--ice-server): candidates through NAT and relays, when the server has them.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        self.sink: RtcSink | None = None           # the owner's own encoding
        self.viewer: ViewerTracks | None = None   # a viewer's share of the session's viewer feed
        self.answer: RTCSessionDescription | None = None
        self.connected_at: float | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- negotiation -------------------------------------------------------------------

    async def open(self, session: "Session") -> None:
        """Answer the offer; raises OfferError for anything unusable."""
        await super().open(session)
        self.state = "connecting"
        pc = self.pc
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        sdp, kind = self._offer
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:  # aiortc raises ValueError/KeyError/... for bad SDP
            raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
        kinds = {t.kind for t in pc.getTransceivers()}
        if not {"audio", "video"} <= kinds:
            raise OfferError("the SDP offer must carry one audio and one video transceiver "
                             f"(got {sorted(kinds) or 'none'}); see the client in static/client.html")
        config = session.config
        if self.owner:
            # The owner's own encoder follows its browser's bandwidth feedback (REMB).
            self.sink = RtcSink(session.clock, config.sample_rate)
            tracks = (self.sink.audio, self.sink.video)
        else:
            feed = session.viewer_feed.acquire()
            self.viewer = feed.add_viewer()
            tracks = (self.viewer.audio, self.viewer.video)
        for track in tracks:
            sender = pc.addTrack(track)
            if config.due_time_reports:
                report_due_times(sender, track)
            if self.viewer is not None and track.kind == "video":
                # Packets are encoded once for all viewers: a viewer's PLI asks the shared encoder.
                sender._send_keyframe = feed.request_keyframe
                only_vp8(pc, sender)
        if not (self.owner and session.listen and session.conversation is not None):
            # Nobody hears this microphone: answering "sendonly" keeps the browser from sending
            # it, and this process from decoding 50 Opus packets a second for nothing.
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.direction = "sendonly"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self.answer = pc.localDescription
        if self.sink is not None:
            session.stream.attach(self.sink)
        self._spawn(self._connect_watchdog(), "watchdog")

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "events" or self.session is None:
            return
        session = self.session
        session.events.attach(channel)
        if self.owner:  # a viewer watches; only the session's own client steers it
            channel.on("message", session.handle_message)
        channel.on("close", lambda: session.events.detach(channel))
        session.events.state(session.state)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio" and self.owner:
            shorten_mic_jitter_buffer(self.pc, track)
            self._spawn(self._consume_mic(track), "mic")
        else:
            self._spawn(self._drain(track), "drain")

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s %s: connection %s", self._who(), self.id, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.time()
            self.state = "running"
            self._spawn(self._watch_peer(), "peer-watch")
        elif state in ("failed", "closed"):
            await self._gone(f"peer {state}")

    async def _watch_peer(self) -> None:
        assert self.session is not None
        silence = await wait_for_silence(self.pc, self.session.config.peer_timeout_s)
        await self._gone(f"peer silent for {silence:.1f} s (tab closed or network lost)")

    async def _connect_watchdog(self) -> None:
        assert self.session is not None
        timeout = self.session.config.connect_timeout_s
        await asyncio.sleep(timeout)
        if self.connected_at is None:
            await self._gone(f"peer did not connect within {timeout:.0f} s")

    async def _gone(self, reason: str) -> None:
        session = self.session
        if session is None or self.state == "stopped":
            return
        if self.owner:
            await session.close(reason)
        else:
            await session.remove_output(self.id, reason)

    async def _consume_mic(self, track: Any) -> None:
        # Every received track must be read, or aiortc piles frames up.
        assert self.session is not None
        try:
            while True:
                self.session.hear(await track.recv())
        except MediaStreamError:
            pass

    async def _drain(self, track: Any) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    # ---- lifecycle ---------------------------------------------------------------------

    def _who(self) -> str:
        return f"session {self.session.id} peer" if self.session is not None else "peer"

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        if self.state == "stopped":
            return
        await super().stop()
        if self.session is not None and self.sink is not None:
            self.session.stream.detach(self.sink)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.sink is not None:
            self.sink.stop()
        if self.viewer is not None and self.session is not None:
            feed = self.session.viewer_feed.feed
            if feed is not None:
                feed.remove_viewer(self.viewer)
            self.session.viewer_feed.release()
            self.viewer = None
        await self.pc.close()

    def stats(self) -> dict[str, Any]:
        tracks = self.sink or self.viewer
        if tracks is None:
            return {}
        return {
            "video_sent": tracks.video.sent,
            "audio_sent": tracks.audio.sent,
            "video_dropped": tracks.video.dropped,
            "audio_dropped": tracks.audio.dropped,
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "owner": self.owner, "connection": self.pc.connectionState}
