"""Speed of the default photo-warp renderer, and a contact sheet of its mouth shapes.

    python bench/bench_renderer.py                   # one CPU thread, batches 1, 4, 8
    python bench/bench_renderer.py --threads 2 --seconds 5
    python bench/bench_renderer.py --device cuda

Prints frames/s of `PhotoWarpRenderer.render_mouth` (warp + interior + yuv420p frames,
everything a FrameSource does per frame) on the 512x512 astronaut, with smooth random
mouth tracks, plus the share of that time spent in torch, the idle-frame cost and the
one-off set-up times. Saves bench/out/photo_warp_shapes.png: rest, open, wide, round,
press, bite and a few visemes, magnified, to judge by eye.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.avatar.landmarks import LandmarkDetector  # noqa: E402
from models.avatar.photo import load_default_avatar  # noqa: E402
from models.lipsync.mouth import BITE, MOUTH_PARAMS, N_MOUTH_PARAMS, PRESS  # noqa: E402
from models.lipsync.photo_warp import PhotoWarpRenderer, yuv420_to_rgb  # noqa: E402

OUT = ROOT / "bench" / "out"
SHAPES: dict[str, dict[str, float]] = {
    "rest": {},
    "open": {"open": 1.0},
    "wide": {"wide": 1.0},
    "round": {"round": 1.0},
    "press": {"press": 1.0},
    "bite": {"bite": 1.0},
    "aa": {"open": 0.9, "wide": 0.3},
    "ee": {"open": 0.3, "wide": 0.7},
    "oh": {"open": 0.55, "round": 0.7},
}


def smooth_track(n: int, seed: int = 0) -> np.ndarray:
    """(n, 5) mouth parameters that wander like speech: low-passed noise, occasional closures."""
    rng = np.random.default_rng(seed)
    noise = rng.random((n + 20, N_MOUTH_PARAMS))
    kernel = np.hanning(9)
    kernel /= kernel.sum()
    track = np.stack([np.convolve(noise[:, k], kernel, mode="same") for k in range(N_MOUTH_PARAMS)], axis=1)[10:-10]
    track = np.clip((track - 0.3) * 2.0, 0.0, 1.0)
    track[:, PRESS] = (track[:, PRESS] > 0.8).astype(float)
    track[:, BITE] = (track[:, BITE] > 0.85).astype(float) * 0.9
    return track.astype(np.float32)


def frames_per_second(fn, track: np.ndarray, batch: int, seconds: float) -> float:
    """Median of three timed runs of fn over the track in batches."""
    for i in range(0, min(len(track), 4 * batch), batch):
        fn(track[i : i + batch])
    runs = []
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            i = (done // batch * batch) % (len(track) - batch)
            fn(track[i : i + batch])
            done += batch
        runs.append(done / (time.perf_counter() - start))
    return statistics.median(runs)


def contact_sheet(renderer: PhotoWarpRenderer, path: Path, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    rows = np.zeros((len(SHAPES), N_MOUTH_PARAMS), dtype=np.float32)
    for r, values in enumerate(SHAPES.values()):
        for name, v in values.items():
            rows[r, MOUTH_PARAMS.index(name)] = v
    frames = renderer.render_mouth(rows)
    c = renderer.crop
    tiles = []
    for name, frame in zip(SHAPES, frames):
        rgb = yuv420_to_rgb(frame)[c.y0 : c.y0 + c.height, c.x0 : c.x0 + c.width]
        tile = Image.fromarray(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)))
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, 8 * len(name) + 8, 16), fill=(0, 0, 0))
        draw.text((4, 2), name, fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    cols = 3
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    parser.add_argument("--batches", default="1,4,8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    detector = LandmarkDetector()
    t1 = time.perf_counter()
    avatar = load_default_avatar(detector)
    t2 = time.perf_counter()
    renderer = PhotoWarpRenderer(avatar, device=args.device)
    t3 = time.perf_counter()
    c = renderer.crop
    print(f"avatar: {avatar.name} {avatar.width}x{avatar.height}, warped crop {c.width}x{c.height} at ({c.x0},{c.y0})")
    print(f"set-up: dlib load {t1 - t0:.2f} s, landmarks {t2 - t1:.2f} s, renderer (fields) {t3 - t2:.2f} s")
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {renderer.device}")

    track = smooth_track(400)
    planes = renderer._render_planes  # torch part only, for the breakdown

    def torch_only(params: np.ndarray) -> None:
        y, u, v = planes(torch.from_numpy(params).to(renderer.device))
        y.cpu(), u.cpu(), v.cpu()

    print(f"{'batch':>5} {'frames/s':>9} {'ms/frame':>9} {'torch-only frames/s':>20}")
    for batch in (int(b) for b in args.batches.split(",")):
        fps = frames_per_second(renderer.render_mouth, track, batch, args.seconds)
        fps_torch = frames_per_second(torch_only, track, batch, args.seconds)
        print(f"{batch:>5} {fps:>9.0f} {1000.0 / fps:>9.2f} {fps_torch:>20.0f}")

    n = 100_000
    start = time.perf_counter()
    for i in range(n):
        renderer.idle_frame(i)
    idle = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in range(2000):
        renderer.idle_frame(i).copy()
    idle_copy = (time.perf_counter() - start) / 2000
    print(f"idle_frame: {idle * 1e6:.2f} us per call (cached); a private copy of it: {idle_copy * 1e6:.0f} us")

    sheet = OUT / "photo_warp_shapes.png"
    contact_sheet(renderer, sheet)
    print(f"contact sheet: {sheet.relative_to(ROOT)} ({', '.join(SHAPES)})")


if __name__ == "__main__":
    main()
