"""H.264 settings for HLS, recordings and RTMP, chosen by measurement on the avatar's own frames.

    python bench/bench_h264.py [--frames 250] [--kbps 800]

Encodes the default avatar's idle frames and a spoken sentence (rendered as in bench_vp8.py)
with libx264 at each preset (tune zerolatency, keyframe every 25 frames, no B-frames, one
thread, CBR-ish at --kbps) and prints CPU ms per frame (thread time), the bitrate that came
out, and the mean luma PSNR against the source. tracks/h264_feed.py uses the choice.
"""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_vp8 import avatar_frames  # noqa: E402

PRESETS = ["ultrafast", "superfast", "veryfast", "faster"]


def encode(frames: list[np.ndarray], preset: str, kbps: int) -> tuple[float, float, float]:
    height = frames[0].shape[0] * 2 // 3
    width = frames[0].shape[1]
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, 25)
    codec.bit_rate = kbps * 1000
    codec.options = {"preset": preset, "tune": "zerolatency", "g": "25", "keyint_min": "25", "sc_threshold": "0",
                     "bf": "0", "threads": "1"}
    decoder = av.CodecContext.create("h264", "r")
    size = 0
    psnr = []
    start = time.thread_time()
    packets = []
    for i, yuv in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        packets += codec.encode(frame)
    packets += codec.encode(None)
    ms = (time.thread_time() - start) / len(frames) * 1000
    decoded = []
    for packet in packets:
        size += packet.size
        decoded += decoder.decode(packet)
    for yuv, frame in zip(frames, decoded):
        a = yuv[:height].astype(np.float64)
        b = frame.to_ndarray(format="yuv420p")[:height].astype(np.float64)
        mse = max(1e-9, float(((a - b) ** 2).mean()))
        psnr.append(10 * np.log10(255 ** 2 / mse))
    return ms, size * 8 / (len(frames) / 25) / 1000, float(np.mean(psnr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--kbps", type=int, default=800)
    args = parser.parse_args()
    sets = avatar_frames(args.frames)
    for name, frames in sets.items():
        h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        print(f"{name}: {len(frames)} frames of {w}x{h}")
        for preset in PRESETS:
            ms, kbps, psnr = encode(frames, preset, args.kbps)
            print(f"  {preset:10s} {ms:6.2f} ms/frame  {kbps:7.0f} kbit/s  PSNR {psnr:5.2f} dB")


if __name__ == "__main__":
    main()
