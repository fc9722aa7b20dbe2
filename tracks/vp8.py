"""aiortc's VP8 encoder without the camera denoiser: rendered faces carry no sensor noise.

aiortc opens libvpx with `noise-sensitivity 4`, a temporal denoiser meant for webcams. On a
rendered avatar it only costs time: about a third of each 512x512 idle frame's encode and a
quarter of a speaking one's (python bench/bench_vp8.py). Everything else (CBR, realtime
deadline, bitrate feedback, packetization) stays aiortc's.
"""
from __future__ import annotations

import multiprocessing

import av
from aiortc import codecs
from aiortc.codecs import vpx


class RenderedVp8Encoder(vpx.Vp8Encoder):
    """Vp8Encoder that opens libvpx with the denoiser off; aiortc does the rest."""

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if self._needs_new_context(frame):
            # aiortc keeps a context it finds matching; one opened here gets used as is.
            self.codec = self._open_context(frame.width, frame.height)
        return super().encode(frame, force_keyframe)

    def _needs_new_context(self, frame: av.VideoFrame) -> bool:
        codec = self.codec
        if codec is None:
            return True
        # aiortc's own rule: a new size or a bitrate change of more than 10% reopens the encoder.
        return (frame.width, frame.height) != (codec.width, codec.height) or (
            abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1
        )

    def _open_context(self, width: int, height: int) -> av.VideoCodecContext:
        bitrate = self.target_bitrate
        context = av.CodecContext.create("libvpx", "w")
        context.width, context.height = width, height
        context.bit_rate = bitrate
        context.pix_fmt = "yuv420p"
        context.gop_size = 3000  # keyframes only when the receiver asks (PLI/FIR)
        context.qmin, context.qmax = 2, 56
        context.options = {
            "bufsize": str(bitrate),   # a one-second rate-control buffer
            "minrate": str(bitrate),   # minrate = maxrate = bit_rate: CBR
            "maxrate": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "noise-sensitivity": "0",  # the one change from aiortc
            "overshoot-pct": "15",
            "undershoot-pct": "100",
            "partitions": "0",
            "static-thresh": "1",
        }
        context.thread_count = vpx.number_of_threads(width * height, multiprocessing.cpu_count())
        return context


def configure_vp8(max_kbps: int) -> None:
    """Have aiortc build RenderedVp8Encoder for VP8 senders, with REMB feedback capped at max_kbps.

    aiortc looks both up in module globals when an encoder is made or its bitrate set, so this
    is a process-wide setting made once at start-up. On loopback REMB climbs to aiortc's 1.5
    Mbit/s ceiling even for a still face; encode and SRTP cost grow with it.
    """
    codecs.Vp8Encoder = RenderedVp8Encoder
    vpx.MAX_BITRATE = max(vpx.MIN_BITRATE, max_kbps * 1000)
    vpx.DEFAULT_BITRATE = min(vpx.DEFAULT_BITRATE, vpx.MAX_BITRATE)
