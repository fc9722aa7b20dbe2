"""A photo avatar: one still image of a face plus its 68 landmarks, ready for a renderer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.avatar.landmarks import LandmarkDetector, single_face

DEFAULT_AVATAR = "astronaut"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True, eq=False)
class PhotoAvatar:
    """name, an (H, W, 3) uint8 RGB image with even H and W, and (68, 2) float32 x/y landmarks."""

    name: str
    rgb: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        h, w = self.rgb.shape[:2]
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"avatar image must be (H, W, 3) uint8 RGB, got {self.rgb.shape} {self.rgb.dtype}")
        if h % 2 or w % 2:
            raise ValueError(f"avatar image must have even width and height for yuv420p, got {w}x{h}")
        if self.landmarks.shape != (68, 2):
            raise ValueError(f"avatar landmarks must be (68, 2), got {self.landmarks.shape}")

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def face_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the landmarks' bounding box, widened to cover forehead and chin, clipped to the image."""
        x0, y0 = self.landmarks.min(axis=0)
        x1, y1 = self.landmarks.max(axis=0)
        pad_x, pad_top, pad_bottom = 0.1 * (x1 - x0), 0.25 * (y1 - y0), 0.08 * (y1 - y0)
        return (
            max(0, int(x0 - pad_x)),
            max(0, int(y0 - pad_top)),
            min(self.width, int(np.ceil(x1 + pad_x))),
            min(self.height, int(np.ceil(y1 + pad_bottom))),
        )

    @classmethod
    def from_image(
        cls, rgb: np.ndarray, name: str, detector: LandmarkDetector, min_face: int = 64
    ) -> "PhotoAvatar":
        """Detect the one face of `rgb` (cropped by a pixel row/column if needed to make it even)."""
        if rgb.ndim == 3 and rgb.shape[2] == 4:
            rgb = rgb[:, :, :3]
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"avatar image must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2])
        face = single_face(detector.detect(rgb), min_size=min_face, what=f"avatar '{name}'")
        return cls(name=name, rgb=rgb, landmarks=face.points.astype(np.float32))


def default_avatar_image() -> np.ndarray:
    """The 512x512 astronaut photo (Eileen Collins, NASA, public domain) bundled with scikit-image."""
    from skimage import data

    return data.astronaut()


def load_default_avatar(detector: LandmarkDetector | None = None) -> PhotoAvatar:
    """The astronaut avatar, landmarks detected with dlib (about a second with a fresh detector)."""
    return PhotoAvatar.from_image(default_avatar_image(), DEFAULT_AVATAR, detector or LandmarkDetector())


def load_avatar(
    name: str = DEFAULT_AVATAR,
    avatar_dir: Path | None = None,
    cache_dir: Path | None = None,
    detector: LandmarkDetector | None = None,
) -> PhotoAvatar:
    """An avatar by name: a prepared avatar in avatar_dir (`python -m models.avatar prepare`;
    its first frame), else an image `<name>.png|jpg|...` there, else the built-in astronaut.

    Landmarks of images are cached in cache_dir (when given) as `<name>.landmarks.npz`, keyed by a
    fingerprint of the pixels, so a restart skips dlib and a changed photo is re-detected.
    """
    from models.avatar.store import AvatarStore  # imports this module: import it late

    store = AvatarStore(avatar_dir)
    if store.exists(name):
        return store.load(name).photo()
    if name == DEFAULT_AVATAR and not _find_image(avatar_dir, name):
        rgb = default_avatar_image()
    else:
        source = _find_image(avatar_dir, name)
        if source is None:
            where = f"in {avatar_dir}" if avatar_dir else "(no avatar folder configured)"
            raise FileNotFoundError(
                f"avatar '{name}' not found {where}; prepare it with `python -m models.avatar prepare`, "
                f"put {name}.png or {name}.jpg there, or use the built-in '{DEFAULT_AVATAR}'"
            )
        rgb = _read_image(source)
    cached = _cached_landmarks(cache_dir, name, rgb)
    if cached is not None:
        h, w = rgb.shape[:2]
        return PhotoAvatar(name=name, rgb=np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2]), landmarks=cached)
    avatar = PhotoAvatar.from_image(rgb, name, detector or LandmarkDetector())
    _store_landmarks(cache_dir, name, rgb, avatar.landmarks)
    return avatar


def _find_image(avatar_dir: Path | None, name: str) -> Path | None:
    if avatar_dir is None:
        return None
    for suffix in _IMAGE_SUFFIXES:
        path = Path(avatar_dir) / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _cache_key(rgb: np.ndarray) -> np.ndarray:
    # Content fingerprint: cheap, and a changed photo never reuses stale landmarks.
    digest = np.frombuffer(rgb.tobytes()[:: max(1, rgb.size // 4096)], dtype=np.uint8)
    return np.array([rgb.shape[0], rgb.shape[1], int(digest.astype(np.int64).sum())], dtype=np.int64)


def _cached_landmarks(cache_dir: Path | None, name: str, rgb: np.ndarray) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{name}.landmarks.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if np.array_equal(data["key"], _cache_key(rgb)) and data["landmarks"].shape == (68, 2):
                return data["landmarks"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
    return None


def _store_landmarks(cache_dir: Path | None, name: str, rgb: np.ndarray, marks: np.ndarray) -> None:
    if cache_dir is None:
        return
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(cache_dir) / f"{name}.landmarks.npz", key=_cache_key(rgb), landmarks=marks)
    except OSError:
        pass  # a read-only cache only costs a second of dlib at the next start
