"""What WebRTC viewers of one session receive: each tick encoded once (VP8 in an encoder thread,
Opus on the clock's thread) and the same packets queued on every viewer's tracks, which aiortc
then only packetizes. A viewer joining, or losing a picture (PLI/FIR), asks for a keyframe."""
from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av

from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.encode_thread import EncodeThread
from tracks.rtc import VIDEO_CLOCK, TickAudio, TickTrack, video_pts
from tracks.vp8 import RenderedVp8Encoder


class ViewerTracks:
    """The two tracks of one viewer."""

    def __init__(self, audio_packets_per_tick: int) -> None:
        self.video = TickTrack("video", max_buffered=3)
        self.audio = TickTrack("audio", max_buffered=3 * audio_packets_per_tick)

    def stop(self) -> None:
        self.video.stop()
        self.audio.stop()


class ViewerFeed(EncodeThread):
    """An AVSink shared by all viewers of a session (one VP8 encoder at a fixed bitrate)."""

    name = "viewer-vp8"

    def __init__(self, clock: MediaClock, sample_rate: int, width: int, height: int, kbps: int,
                 loop: asyncio.AbstractEventLoop, backlog: int = 5) -> None:
        super().__init__(backlog)
        self.clock = clock
        self.loop = loop
        self.tick_audio = TickAudio(clock, sample_rate)
        encoder = RenderedVp8Encoder()
        encoder.target_bitrate = kbps * 1000
        self._vp8 = encoder._open_context(width, height)
        self._video_tb = Fraction(1, VIDEO_CLOCK)
        self._viewers: list[ViewerTracks] = []
        self._lock = threading.Lock()
        self._keyframe_wanted = True
        self.start()

    def add_viewer(self) -> ViewerTracks:
        tracks = ViewerTracks(self.tick_audio.packets_per_tick)
        with self._lock:
            self._viewers.append(tracks)
        self.request_keyframe()
        return tracks

    def remove_viewer(self, tracks: ViewerTracks) -> None:
        with self._lock:
            if tracks in self._viewers:
                self._viewers.remove(tracks)
        tracks.stop()

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def push(self, tick: int, frame: AVFrame) -> None:
        # Opus is cheap and must stay on the tick (see tracks/opus.py); VP8 goes to the thread.
        audio = self.tick_audio.packets(tick, frame.audio)
        for tracks in self._snapshot():
            for packet, due in audio:
                tracks.audio.put(packet, due)
        super().push(tick, frame)

    def encode(self, tick: int, frame: AVFrame) -> None:
        vf = av.VideoFrame.from_ndarray(frame.video, format="yuv420p")
        pts = video_pts(tick, self.clock.fps)
        vf.pts, vf.time_base = pts, self._video_tb
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            vf.pict_type = av.video.frame.PictureType.I
        packets = self._vp8.encode(vf)
        for packet in packets:
            # (encode rescaled vf.pts to the codec's time base; time_base goes first, as setting
            # it rescales pts)
            packet.time_base = self._video_tb
            packet.pts = packet.dts = pts
        if packets and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, packets, self.clock.due(tick))

    def _deliver(self, packets: list[av.Packet], due: float) -> None:
        for tracks in self._snapshot():
            for packet in packets:
                tracks.video.put(packet, due)

    def _snapshot(self) -> list[ViewerTracks]:
        with self._lock:
            return list(self._viewers)

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def close(self) -> None:
        super().close()
        for tracks in self._snapshot():
            tracks.stop()
