"""How long avatar preparation takes, and how long a prepared avatar takes to load.

    python bench/bench_avatar_prepare.py                # 5 s clips
    python bench/bench_avatar_prepare.py --seconds 10

Generates the clips itself from the scikit-image astronaut (moving and zooming a little every
frame, H.264): a 512x512 one at 25 fps, and a 1280x720 landscape one at 30 fps (prepared
at 720x404). Prints, per clip: wall and CPU seconds per second of video, split into the
stages the progress callback reports (decode + detect + landmarks + JPEG, smoothing, crops),
the folder size, and the median time of AvatarStore.load over 5 loads. Also the photo case.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.avatar.landmarks import LandmarkDetector  # noqa: E402
from models.avatar.prepare import prepare_image, prepare_video  # noqa: E402
from models.avatar.store import AvatarStore  # noqa: E402


def make_clip(path: Path, background: np.ndarray, seconds: float, fps: int) -> Path:
    """The picture drifting right 1 px and zooming 0.1 % per frame."""
    height, width = background.shape[:2]
    base = Image.fromarray(background)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for k in range(int(seconds * fps)):
            zoom, dx, cx, cy = 1 + 0.001 * k, 1.0 * k, width / 2, height / 2
            coeffs = (1 / zoom, 0, cx - (cx + dx) / zoom, 0, 1 / zoom, cy - cy / zoom)
            frame = np.asarray(base.transform((width, height), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class StageClock:
    """progress(done, total, message) -> seconds spent per message."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._current: str | None = None
        self._since = time.perf_counter()

    def __call__(self, done: int, total: int, message: str) -> None:
        if message != self._current:
            self.stop()
            self._current, self._since = message, time.perf_counter()

    def stop(self) -> None:
        if self._current is not None:
            now = time.perf_counter()
            self.stages[self._current] = self.stages.get(self._current, 0.0) + now - self._since
            self._since = now


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from skimage import data

    astronaut = data.astronaut()
    t0 = time.perf_counter()
    detector = LandmarkDetector()
    print(f"dlib detector + 68-point predictor load: {time.perf_counter() - t0:.2f} s")

    landscape = np.zeros((720, 1280, 3), np.uint8)
    landscape[:, 280:1000] = np.asarray(Image.fromarray(astronaut).resize((720, 720), Image.Resampling.BICUBIC))
    with tempfile.TemporaryDirectory() as tmp:
        store = AvatarStore(Path(tmp) / "avatars")

        photo = Path(tmp) / "astronaut.png"
        Image.fromarray(astronaut).save(photo)
        t0 = time.perf_counter()
        prepare_image(photo, "photo", store, detector)
        print(f"photo 512x512: prepare {time.perf_counter() - t0:.2f} s, "
              f"load {min(_timed(lambda: store.load('photo')) for _ in range(5)) * 1000:.0f} ms")

        clips = [("512x512 @25", astronaut, 25), ("1280x720 @30", landscape, 30)]
        for label, picture, fps in clips:
            path = make_clip(Path(tmp) / "clip.mp4", picture, args.seconds, fps)
            name = label.split()[0]
            clock = StageClock()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            info = prepare_video(path, name, store, max_seconds=args.seconds, detector=detector, progress=clock)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            clock.stop()
            seconds = info.frames / info.fps
            loads = [_timed(lambda: store.load(name)) for _ in range(5)]
            stages = ", ".join(f"{m} {t / seconds:.2f}" for m, t in clock.stages.items() if m != "saved")
            print(f"video {label} -> {info.width}x{info.height}, {info.frames} frames: "
                  f"prepare {wall / seconds:.2f} s wall ({cpu / seconds:.2f} s CPU) per video second "
                  f"[{stages}]; folder {folder_mb(store.root / name):.1f} MB; "
                  f"load median {statistics.median(loads) * 1000:.0f} ms")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
