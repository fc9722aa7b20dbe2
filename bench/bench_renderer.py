"""Speed of the default photo-warp renderer (still, alive, and on a video avatar), and pictures to judge by eye.

    python bench/bench_renderer.py                   # one CPU thread, batches 1, 4, 8
    python bench/bench_renderer.py --threads 2 --seconds 5
    python bench/bench_renderer.py --device cuda

On the 512x512 astronaut, with smooth random mouth tracks, prints:
- frames/s of `PhotoWarpRenderer.render_mouth` (the still photo: warp + interior + yuv420p
  frames) per batch size, and the share of that spent in torch;
- with life (blinks, sway, nods): speaking frames/s of `render_frames` on consecutive clock
  ticks, and the CPU cost of `idle_frame` over a minute of ticks on a fresh renderer (mean,
  99th percentile, worst; the share of one core at 25 fps);
- a 512x512 video avatar (50 frames of the astronaut drifting and zooming, made in memory):
  speaking frames/s of `VideoWarpRenderer.render_frames` and its idle-frame cost;
- the one-off set-up times.
Saves bench/out/photo_warp_shapes.png (rest, open, wide, round, press, bite and a few
visemes, magnified) and bench/out/photo_blink.png (the eyes through one blink).
CPU costs are process CPU time (time.process_time), steadier than wall time on a busy box.
"""
from __future__ import annotations

import argparse
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
from models.avatar.store import CROP_SIZE, PreparedAvatar  # noqa: E402
from models.lipsync.photo_warp import PhotoWarpRenderer  # noqa: E402
from models.lipsync.video_warp import VideoWarpRenderer  # noqa: E402
from models.lipsync.yuv import yuv420_to_rgb  # noqa: E402

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
    """Best of three timed runs (CPU time) of fn(rows, ticks) over the track in batches, on consecutive ticks."""
    for i in range(0, min(len(track), 4 * batch), batch):
        fn(track[i : i + batch], range(i, i + batch))
    runs = []
    for _ in range(3):
        done, start = 0, time.process_time()
        while time.process_time() - start < seconds / 3:
            i = (done // batch * batch) % (len(track) - batch)
            fn(track[i : i + batch], range(done, done + batch))
            done += batch
        runs.append(done / (time.process_time() - start))
    return max(runs)


def idle_costs(renderer, ticks: int) -> np.ndarray:
    """CPU seconds of each idle_frame call for ticks 0..ticks-1, in order (as one session's clock calls it)."""
    out = np.empty(ticks)
    for t in range(ticks):
        start = time.process_time()
        renderer.idle_frame(t)
        out[t] = time.process_time() - start
    return out


def idle_line(name: str, costs: np.ndarray, fps: int) -> str:
    ms = costs * 1000.0
    return (f"{name}: {ms.mean():.3f} ms per frame on average (p99 {np.percentile(ms, 99):.2f} ms, worst "
            f"{ms.max():.2f} ms) = {ms.mean() * fps / 10.0:.1f} % of one core at {fps} fps")


def video_avatar(avatar, n: int = 50) -> PreparedAvatar:
    """The astronaut drifting (+-3 px) and zooming (+-1 %) over n frames, landmarks moved alike (no dlib)."""
    from PIL import Image

    frames, marks = [], []
    c = avatar.width / 2.0
    for k in range(n):
        dx, dy, zoom = 3.0 * np.sin(k / 5.0), 2.0 * np.cos(k / 7.0), 1.0 + 0.01 * np.sin(k / 9.0)
        coeffs = (1 / zoom, 0.0, c - (c + dx) / zoom, 0.0, 1 / zoom, c - (c + dy) / zoom)
        image = Image.fromarray(avatar.rgb).transform((avatar.width, avatar.height), Image.Transform.AFFINE,
                                                      coeffs, Image.Resampling.BILINEAR)
        frames.append(np.asarray(image))
        marks.append((avatar.landmarks - c) * zoom + c + np.array([dx, dy]))
    return PreparedAvatar(
        name="drift", kind="video", fps=25.0, frames=np.stack(frames), landmarks=np.stack(marks).astype(np.float32),
        boxes=np.zeros((n, 4), np.int32), crops=np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8),
    )


def blink_strip(renderer: PhotoWarpRenderer, path: Path, scale: int = 5) -> None:
    from PIL import Image

    life = renderer.life
    first = life.blinks.starts(0, 100 * renderer.fps)[0]
    box = life.eyes.box
    rows = []
    for t in range(first - 1, first + 6):
        rgb = yuv420_to_rgb(renderer.idle_frame(t))[box.y0 - 6 : box.y1 + 6, box.x0 - 6 : box.x1 + 6]
        rows.append(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


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
    planes = renderer.mouth.render_planes  # torch part only, for the breakdown
    still = PhotoWarpRenderer(avatar, device=args.device, life=None)

    def torch_only(params: np.ndarray, ticks) -> None:
        y, u, v = planes(torch.from_numpy(params).to(renderer.device))
        y.cpu(), u.cpu(), v.cpu()

    print("\nstill photo (mouth only):")
    print(f"{'batch':>5} {'frames/s':>9} {'ms/frame':>9} {'torch-only frames/s':>20}")
    for batch in (int(b) for b in args.batches.split(",")):
        fps = frames_per_second(lambda rows, ticks: still.render_mouth(rows), track, batch, args.seconds)
        fps_torch = frames_per_second(torch_only, track, batch, args.seconds)
        print(f"{batch:>5} {fps:>9.0f} {1000.0 / fps:>9.2f} {fps_torch:>20.0f}")

    print("\nalive (blinks, sway, nods):")
    def nods(ticks) -> np.ndarray:
        """A 1.5 px, 6-tick dip every 2 s, as on stressed syllables."""
        phase = np.asarray(ticks) % 50
        return np.where(phase < 6, 0.75 * (1.0 - np.cos(2.0 * np.pi * phase / 6.0)), 0.0)

    for batch in (int(b) for b in args.batches.split(",")):
        def speak(rows, ticks):
            renderer.render_frames(rows, ticks, nods(ticks))

        fps = frames_per_second(speak, track, batch, args.seconds)
        print(f"  speaking, batch {batch}: {fps:.0f} frames/s ({1000.0 / fps:.2f} ms/frame)")
    fresh = PhotoWarpRenderer(avatar, device=args.device)
    minute = 60 * fresh.fps
    costs = idle_costs(fresh, minute)
    changes = int((np.abs(np.diff(fresh.life.poses(range(minute)), axis=0)).sum(axis=1) > 0).sum())
    print("  " + idle_line("idle_frame", costs, fresh.fps))
    print(f"  ({changes} pose changes in {minute} ticks re-warp the photo; the rest are cache hits or blinks)")
    costs = idle_costs(fresh, minute)
    print("  " + idle_line("idle_frame, second minute (warm cache)", costs, fresh.fps))
    start = time.process_time()
    for i in range(2000):
        still.idle_frame(i)
    print(f"  still photo idle_frame: {(time.process_time() - start) / 2000 * 1e6:.2f} us per call (cached)")

    start = time.perf_counter()
    prepared = video_avatar(avatar)
    made = time.perf_counter()
    video = VideoWarpRenderer(prepared, device=args.device)
    built = time.perf_counter()
    print(f"\nvideo avatar {video.width}x{video.height}, {video.n_source} frames (made in {made - start:.1f} s, "
          f"renderer {built - made:.2f} s, mouth box {video.boxes[0].width}x{video.boxes[0].height}):")
    for batch in (int(b) for b in args.batches.split(",")):
        fps = frames_per_second(video.render_frames, track, batch, args.seconds)
        print(f"  speaking, batch {batch}: {fps:.0f} frames/s ({1000.0 / fps:.2f} ms/frame)")
    print("  " + idle_line("idle_frame", idle_costs(video, minute), video.fps))

    sheet = OUT / "photo_warp_shapes.png"
    contact_sheet(still, sheet)
    print(f"\ncontact sheet: {sheet.relative_to(ROOT)} ({', '.join(SHAPES)})")
    strip = OUT / "photo_blink.png"
    blink_strip(renderer, strip)
    print(f"blink: {strip.relative_to(ROOT)} (one tick before a blink, then every tick through it)")


if __name__ == "__main__":
    main()
