"""Wav2Lip neural renderer throughput: net-only and end-to-end (mel + net + paste + yuv420p) frames/s.

    python bench/bench_wav2lip.py                     # CPU: batch 1/8/16 at torch threads 2 and 1
    python bench/bench_wav2lip.py --device cuda       # CUDA fp16: batch 16/32/64
    python bench/bench_wav2lip.py --checkpoint wav2lip_gan.pth   # real weights (else random ones)

Real time at 25 fps needs >= 25 frames/s end to end for each speaking session.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.lipsync.wav2lip_checkpoint import load_wav2lip_checkpoint  # noqa: E402
from models.lipsync.wav2lip_net import Wav2LipNet  # noqa: E402
from models.lipsync.wav2lip_renderer import Wav2LipRenderer  # noqa: E402
from models.speech import SpeechChunk  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def net_fps(net: Wav2LipNet, device: torch.device, batch: int, min_seconds: float) -> float:
    """Frames/s of the bare net at `batch` (fp16 autocast on CUDA)."""
    mels = torch.rand(batch, 1, 80, 16, device=device) * 8 - 4
    faces = torch.rand(batch, 6, 96, 96, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        net(mels, faces)  # warm-up (kernel selection, allocator)
        _sync(device)
        frames, start = 0, time.perf_counter()
        while True:
            net(mels, faces)
            frames += batch
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return frames / elapsed


def renderer_fps(renderer: Wav2LipRenderer, seconds_of_speech: float) -> float:
    """End-to-end frames/s for one chunk: begin() (mel) plus rendering every frame."""
    rate = 22050
    t = np.arange(int(seconds_of_speech * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype(np.int16)
    speech = SpeechChunk("bench", audio, rate)
    renderer.begin(speech, 0).render(0, renderer.batch_size)  # warm-up
    start = time.perf_counter()
    source = renderer.begin(speech, 0)
    source.render(0, source.n_frames)
    return source.n_frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--checkpoint", type=Path, help="a Wav2Lip generator checkpoint (default: random weights)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing span per figure")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available on this machine: skipping the GPU figures "
              "(run this script on a GPU box with --device cuda)")
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = Path(tmp) / "random_wav2lip.pth"
            torch.save({"state_dict": {"module." + k: v for k, v in Wav2LipNet().state_dict().items()}}, checkpoint)
            print("weights: random (same layout and compute as wav2lip.pth)")
        avatar = np.full((512, 512, 3), 128, dtype=np.uint8)
        box = (156, 140, 356, 380)

        if device.type == "cpu":
            print(f"device: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads available")
            for threads in (2, 1):
                torch.set_num_threads(threads)
                net = load_wav2lip_checkpoint(checkpoint, device)
                for batch in (1, 8, 16):
                    fps = net_fps(net, device, batch, args.seconds)
                    print(f"cpu threads={threads} batch={batch:2d}: net {fps:6.2f} frames/s")
                renderer = Wav2LipRenderer(avatar, box, checkpoint, device="cpu", batch_size=16)
                print(f"cpu threads={threads} batch=16: end to end {renderer_fps(renderer, 2.0):6.2f} frames/s "
                      f"(512x512 frame, 200x250 face box)")
        else:
            torch.backends.cudnn.benchmark = True
            print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, fp16 autocast")
            net = load_wav2lip_checkpoint(checkpoint, device).to(memory_format=torch.channels_last)
            for batch in (16, 32, 64):
                renderer = Wav2LipRenderer(avatar, box, checkpoint, device=device, batch_size=batch)
                fps = net_fps(net, device, batch, args.seconds)
                e2e = renderer_fps(renderer, 8.0)
                print(f"cuda batch={batch:2d}: net {fps:8.1f} frames/s, end to end {e2e:7.1f} frames/s "
                      f"(512x512 frame, 200x250 face box)")


if __name__ == "__main__":
    main()
