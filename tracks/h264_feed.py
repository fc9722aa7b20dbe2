"""One H.264 + AAC encoding of a session's ticks, shared by every output that muxes it (HLS,
recording, RTMP): each tick is encoded once, off the clock's thread.

The clock hands frames over with `push` (never blocks; when the encoder falls more than its
backlog behind, the oldest frames are dropped and counted). The encoder thread turns them
into EncodedPackets, immutable and safe to hand to several muxer threads at once. Keyframes
come every `gop` frames exactly (no scene-cut keyframes, no B-frames), so a segmenter can cut
on each keyframe and every segment starts decodable.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np

from tracks.avframe import AVFrame
from tracks.encode_thread import EncodeThread


@dataclass(frozen=True)
class EncodedPacket:
    kind: str            # "video" | "audio"
    data: bytes
    pts: int
    dts: int
    time_base: Fraction
    keyframe: bool
    duration: int = 0  # in time_base (an AAC packet: 1024 samples)

    def to_av(self, stream: av.stream.Stream) -> av.Packet:
        """A fresh av.Packet of this data for `stream` of some output container."""
        packet = av.Packet(self.data)
        packet.pts, packet.dts = self.pts, self.dts
        packet.time_base = self.time_base
        packet.is_keyframe = self.keyframe
        packet.stream = stream
        return packet


PacketConsumer = Callable[[list[EncodedPacket]], None]


def encoder_options(encoder: str, gop: int) -> dict[str, str]:
    """Low-latency settings: a keyframe every `gop` frames exactly, no B-frames, no lookahead."""
    if encoder == "h264_nvenc":
        return {"preset": "p1", "tune": "ll", "zerolatency": "1", "g": str(gop), "bf": "0",
                "forced-idr": "1", "rc": "cbr"}
    # ultrafast: 1.05 ms a 512x512 frame at 45 dB PSNR; superfast 1.9 ms for +1.5 dB, veryfast
    # 2.4 ms (python bench/bench_h264.py, at 800 kbit/s). zerolatency: no frame lookahead.
    return {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop), "keyint_min": str(gop),
            "sc_threshold": "0", "bf": "0", "threads": "1", "forced-idr": "1"}


def pick_encoder(wanted: str) -> str:
    """`auto`: NVENC when this FFmpeg has it and a GPU opens it, else libx264."""
    if wanted != "auto":
        return wanted
    try:
        codec = av.CodecContext.create("h264_nvenc", "w")
        codec.width, codec.height, codec.pix_fmt = 256, 256, "yuv420p"
        codec.time_base = Fraction(1, 25)
        codec.open()
        return "h264_nvenc"
    except Exception:
        return "libx264"


class H264Feed(EncodeThread):
    """An AVSink: H.264 (libx264, zerolatency) + AAC packets of every tick, for all consumers."""

    name = "h264-feed"

    def __init__(self, width: int, height: int, fps: int, sample_rate: int, *, kbps: int = 800,
                 gop: int = 25, backlog: int = 50, encoder: str = "libx264") -> None:
        super().__init__(backlog)
        self.fps = fps
        self.sample_rate = sample_rate
        # Encoders live in a container that is never written to: its streams are the templates
        # (codec parameters, SPS/PPS) each muxer copies with add_stream_from_template.
        self._templates = av.open(io.BytesIO(), "w", format="mp4")
        video = self._templates.add_stream(encoder, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.bit_rate = kbps * 1000
        video.codec_context.options = encoder_options(encoder, gop)
        audio = self._templates.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        audio.codec_context.bit_rate = 64_000
        self._templates.start_encoding()
        self.video_template, self.audio_template = video, audio
        self._video_tb = Fraction(1, fps)
        self._audio_tb = Fraction(1, sample_rate)
        self._consumers: list[PacketConsumer] = []
        self._lock = threading.Lock()
        self._keyframe_wanted = False
        self.start()

    # ---- consumers ---------------------------------------------------------------------

    def subscribe(self, consumer: PacketConsumer) -> None:
        """`consumer` gets every later packet batch, from the encoder thread; it must not block."""
        with self._lock:
            self._consumers.append(consumer)

    def unsubscribe(self, consumer: PacketConsumer) -> None:
        with self._lock:
            if consumer in self._consumers:
                self._consumers.remove(consumer)

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (a new output starts on it instead of a gop later)."""
        self._keyframe_wanted = True

    # ---- the encoder thread ------------------------------------------------------------

    def encode(self, tick: int, frame: AVFrame) -> None:
        packets = self._encode(tick, frame)
        if packets:
            with self._lock:
                consumers = list(self._consumers)
            for consumer in consumers:
                consumer(packets)

    def _encode(self, tick: int, frame: AVFrame) -> list[EncodedPacket]:
        vf = av.VideoFrame.from_ndarray(frame.video, format="yuv420p")
        vf.pts, vf.time_base = tick, self._video_tb
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            vf.pict_type = av.video.frame.PictureType.I
        out = [self._packet("video", p) for p in self.video_template.encode(vf)]
        pcm = np.ascontiguousarray(frame.audio, dtype=np.int16).reshape(1, -1)
        af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        af.sample_rate = self.sample_rate
        # Audio pts follow the tick, so a dropped tick leaves a gap in both tracks alike.
        af.pts, af.time_base = tick * (self.sample_rate // self.fps), self._audio_tb
        out += [self._packet("audio", p) for p in self.audio_template.encode(af)]
        return out

    @staticmethod
    def _packet(kind: str, packet: av.Packet) -> EncodedPacket:
        return EncodedPacket(kind, bytes(packet), packet.pts, packet.dts, packet.time_base, packet.is_keyframe,
                             packet.duration or 0)

    def close(self) -> None:
        super().close()
        with self._lock:
            self._consumers.clear()
