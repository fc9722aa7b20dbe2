"""VP8 encode cost of the avatar's own frames: aiortc's encoder vs tracks/vp8.RenderedVp8Encoder.

    python bench/bench_vp8.py [--frames 250] [--kbps 600]

Renders the default avatar's idle frames (blinks, sway) and a spoken sentence, then encodes
each sequence on one thread with aiortc's Vp8Encoder (webcam denoiser on) and with
RenderedVp8Encoder (denoiser off), both at the same CBR target. Prints CPU ms per frame
(thread time) and the bitrate that came out.
"""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiortc.codecs import vpx  # noqa: E402

from tracks.vp8 import RenderedVp8Encoder  # noqa: E402


def avatar_frames(count: int) -> dict[str, list]:
    import torch

    from models.tts import PiperTTS
    from rtc_server.config import Config
    from models.bundle import build_renderer

    torch.set_num_threads(1)
    renderer = build_renderer(Config(), "cpu")
    idle = [renderer.idle_frame(t).copy() for t in range(count)]
    (chunk,) = PiperTTS().synthesize("Peter Piper picked a peck of pickled peppers, and the band played on.")
    source = renderer.begin(chunk, 0)
    speaking = source.render(0, min(count, source.n_frames))
    return {"idle": idle, "speaking": speaking}


def encode_cost(encoder_class, frames: list, kbps: int) -> tuple[float, float]:
    encoder = encoder_class()
    encoder.target_bitrate = kbps * 1000
    sent = 0
    start = time.thread_time()
    for i, yuv in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = i * 3600, Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame)
        sent += sum(len(p) for p in payloads)
    ms = (time.thread_time() - start) / len(frames) * 1000
    return ms, sent * 8 / (len(frames) / 25) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--kbps", type=int, default=600, help="CBR target for both encoders")
    args = parser.parse_args()
    vpx.MAX_BITRATE = max(vpx.MAX_BITRATE, args.kbps * 1000)
    for name, frames in avatar_frames(args.frames).items():
        for label, cls in (("aiortc Vp8Encoder", vpx.Vp8Encoder), ("RenderedVp8Encoder", RenderedVp8Encoder)):
            ms, kbps = encode_cost(cls, frames, args.kbps)
            print(f"{name:8s} {label:20s} {ms:5.2f} ms/frame (CPU, one thread)  {kbps:5.0f} kbit/s  "
                  f"({len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0] * 2 // 3})")


if __name__ == "__main__":
    main()
