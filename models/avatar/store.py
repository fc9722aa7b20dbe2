"""Prepared avatars on disk: one folder per avatar, written atomically, loaded in well under a second.

Layout of `<root>/<name>/` (format 1):

    avatar.json     format, name, kind (photo|video), fps (0 for a photo), width, height, n_frames, source,
                    created (UTC, ISO 8601), crop_size, chin_pad, notes
    frames/         000000.png (a photo, lossless) or 000000.jpg ... (a video, JPEG quality 95),
                    RGB, even width and height
    landmarks.npy   (N, 68, 2) float32 x/y, smoothed over time for a video
    boxes.npy       (N, 4) int32 face boxes x0, y0, x1, y1 (PhotoAvatar.face_box recipe, smoothed)
    crops.npy       (N, 96, 96, 3) uint8 BGR: each box plus CHIN_PAD rows below, resized, as a
                    Wav2Lip-style renderer wants its face input

Folders whose name starts with a dot are work in progress (`.<name>.partial-<pid>-<tag>`) or
on their way out, and are never listed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from models.avatar.photo import PhotoAvatar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CROP_SIZE = 96   # Wav2Lip's face input size
CHIN_PAD = 10    # rows added below the face box before cropping, as Wav2Lip checkpoints were trained
JPEG_QUALITY = 95
KINDS = ("photo", "video")
META_FILE = "avatar.json"
FRAMES_DIR = "frames"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AvatarStoreError(ValueError):
    """Something about a stored avatar (its name, its presence, its files) is wrong."""


class AvatarNameError(AvatarStoreError):
    pass


class AvatarNotFoundError(AvatarStoreError):
    pass


class AvatarExistsError(AvatarStoreError):
    pass


class AvatarDamagedError(AvatarStoreError):
    pass


def default_avatar_dir() -> Path:
    """`$XDG_DATA_HOME/avatar-server/avatars`, by default `~/.local/share/avatar-server/avatars`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "avatar-server" / "avatars"


def validate_name(name: str) -> str:
    """The name itself, or an AvatarNameError saying what a name may hold."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise AvatarNameError(
            f"invalid avatar name {name!r}: use 1 to 64 letters, digits, '_' or '-' (e.g. 'anna' or 'desk-2')"
        )
    return name


def name_from_filename(filename: str) -> str:
    """A valid avatar name made from a file name: its stem with other characters turned into '-'."""
    stem = Path(filename).stem
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:64]
    return name or "avatar"


@dataclass(frozen=True)
class AvatarInfo:
    """What avatar.json says about one prepared avatar (fps is 0.0 for a photo)."""

    name: str
    kind: str
    frames: int
    fps: float
    width: int
    height: int
    created: str
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps else 0.0

    def to_json(self) -> dict[str, Any]:
        """A plain dict for an HTTP answer."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, eq=False)
class PreparedAvatar:
    """A loaded avatar: N frames (1 for a photo, whose fps is 0.0) with per-frame landmarks, face
    boxes and face crops. A video renderer plays the frames at `fps`, looping or ping-ponging."""

    name: str
    kind: str
    fps: float
    frames: np.ndarray      # (N, H, W, 3) uint8 RGB
    landmarks: np.ndarray   # (N, 68, 2) float32
    boxes: np.ndarray       # (N, 4) int32 x0, y0, x1, y1
    crops: np.ndarray       # (N, CROP_SIZE, CROP_SIZE, 3) uint8 BGR
    info: AvatarInfo | None = None

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8 or n == 0:
            raise ValueError(f"frames must be (N, H, W, 3) uint8 with N >= 1, got {self.frames.shape} {self.frames.dtype}")
        if self.landmarks.shape != (n, 68, 2):
            raise ValueError(f"landmarks must be ({n}, 68, 2), got {self.landmarks.shape}")
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.crops.shape != (n, CROP_SIZE, CROP_SIZE, 3):
            raise ValueError(f"crops must be ({n}, {CROP_SIZE}, {CROP_SIZE}, 3), got {self.crops.shape}")

    @property
    def n_frames(self) -> int:
        return int(len(self.frames))

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    def photo(self, index: int = 0) -> PhotoAvatar:
        """One frame (the first by default) as a PhotoAvatar, for renderers that animate a still."""
        return PhotoAvatar(
            name=self.name,
            rgb=np.ascontiguousarray(self.frames[index]),
            landmarks=np.ascontiguousarray(self.landmarks[index], dtype=np.float32),
        )


class AvatarStore:
    """The folder of prepared avatars: list, load, delete, and atomic writing of new ones."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_avatar_dir()

    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / META_FILE).is_file()

    def list(self) -> list[AvatarInfo]:
        """Every readable avatar, sorted by name (a damaged folder is logged and skipped)."""
        if not self.root.is_dir():
            return []
        infos = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not _NAME_RE.fullmatch(folder.name) or not folder.is_dir():
                continue
            if not (folder / META_FILE).is_file():
                continue
            try:
                infos.append(self.info(folder.name))
            except AvatarStoreError as err:
                log.warning("skipping %s: %s", folder, err)
        return infos

    def info(self, name: str) -> AvatarInfo:
        """avatar.json of one avatar, without loading its frames."""
        folder = self._existing(name)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            return _info_from_meta(meta)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AvatarDamagedError(
                f"avatar '{name}' in {self.root} has an unreadable {META_FILE} ({err}); prepare it again with --overwrite"
            ) from err

    def load(self, name: str) -> PreparedAvatar:
        """All frames and per-frame data of one avatar."""
        info = self.info(name)
        folder = self.path(name)
        try:
            frame_files = sorted((folder / FRAMES_DIR).iterdir())
            if len(frame_files) != info.frames:
                raise ValueError(f"{len(frame_files)} frame files for {info.frames} frames")
            frames = _read_frames(frame_files, info.height, info.width)
            avatar = PreparedAvatar(
                name=info.name,
                kind=info.kind,
                fps=info.fps,
                frames=frames,
                landmarks=np.load(folder / "landmarks.npy").astype(np.float32, copy=False),
                boxes=np.load(folder / "boxes.npy").astype(np.int32, copy=False),
                crops=np.load(folder / "crops.npy"),
                info=info,
            )
        except (OSError, ValueError) as err:
            raise AvatarDamagedError(
                f"avatar '{name}' in {self.root} is damaged ({err}); prepare it again with --overwrite"
            ) from err
        return avatar

    def delete(self, name: str) -> None:
        folder = self._existing(name)
        # Rename first, so a reader never sees a half-deleted avatar.
        doomed = self.root / f".{name}.deleted-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def writer(self, name: str, overwrite: bool = False) -> "AvatarWriter":
        """A context manager that writes a new avatar into a hidden folder and renames it into place
        on success; on any error the partial folder is removed and nothing else changes."""
        validate_name(name)
        if not overwrite and self.exists(name):
            raise AvatarExistsError(self._exists_message(name))
        return AvatarWriter(self, name, overwrite)

    def _existing(self, name: str) -> Path:
        folder = self.path(name)
        if not (folder / META_FILE).is_file():
            raise AvatarNotFoundError(
                f"avatar '{name}' not found in {self.root}; see `python -m models.avatar list` "
                "or prepare it with `python -m models.avatar prepare --image FILE --name NAME`"
            )
        return folder

    def _exists_message(self, name: str) -> str:
        return f"avatar '{name}' already exists in {self.root}; pick another name or overwrite it (--overwrite)"

    def remove_stale_partials(self) -> None:
        """Remove work folders left by processes that no longer run (a killed prepare)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            match = re.fullmatch(r"\.[A-Za-z0-9_-]{1,64}\.(?:partial|old|deleted)-(\d+)-[0-9a-f]+", folder.name)
            if match and not _process_alive(int(match.group(1))):
                shutil.rmtree(folder, ignore_errors=True)


class AvatarWriter:
    """Writes one avatar's files into `<root>/.<name>.partial-<pid>-<tag>`; see AvatarStore.writer."""

    def __init__(self, store: AvatarStore, name: str, overwrite: bool) -> None:
        self.store = store
        self.name = name
        self.overwrite = overwrite
        self.tmp = store.root / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._frame_paths: list[Path] = []
        self._finished: AvatarInfo | None = None

    def __enter__(self) -> "AvatarWriter":
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.store.remove_stale_partials()
        (self.tmp / FRAMES_DIR).mkdir(parents=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or self._finished is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def n_frames(self) -> int:
        return len(self._frame_paths)

    def add_frame(self, rgb: np.ndarray, lossless: bool = False) -> None:
        """Append one (H, W, 3) uint8 RGB frame: PNG when lossless (a photo), else JPEG quality 95."""
        from PIL import Image

        index = len(self._frame_paths)
        image = Image.fromarray(np.ascontiguousarray(rgb))
        if lossless:
            path = self.tmp / FRAMES_DIR / f"{index:06d}.png"
            image.save(path, format="PNG", compress_level=3)
        else:
            path = self.tmp / FRAMES_DIR / f"{index:06d}.jpg"
            image.save(path, format="JPEG", quality=JPEG_QUALITY)
        self._frame_paths.append(path)

    def read_frame(self, index: int) -> np.ndarray:
        """A frame as stored (JPEG-decoded for a video), so crops match what a loader sees."""
        return _read_image(self._frame_paths[index])

    def finish(
        self,
        kind: str,
        fps: float,
        landmarks: np.ndarray,
        boxes: np.ndarray,
        crops: np.ndarray,
        source: str = "",
        notes: tuple[str, ...] = (),
    ) -> AvatarInfo:
        """Write the arrays and avatar.json, then move the folder into place."""
        n = self.n_frames
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if n == 0:
            raise ValueError("an avatar needs at least one frame")
        first = self.read_frame(0)
        height, width = first.shape[:2]
        # Validate shapes through the same checks a loader applies.
        PreparedAvatar(self.name, kind, float(fps), first[None], landmarks[:1], boxes[:1], crops[:1])
        if len(landmarks) != n or len(boxes) != n or len(crops) != n:
            raise ValueError(f"{n} frames but {len(landmarks)} landmarks, {len(boxes)} boxes, {len(crops)} crops")
        np.save(self.tmp / "landmarks.npy", landmarks.astype(np.float32))
        np.save(self.tmp / "boxes.npy", boxes.astype(np.int32))
        np.save(self.tmp / "crops.npy", np.ascontiguousarray(crops, dtype=np.uint8))
        info = AvatarInfo(
            name=self.name, kind=kind, frames=n, fps=float(fps), width=int(width), height=int(height),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            source=source, notes=tuple(notes),
        )
        meta = {
            "format": FORMAT_VERSION, "name": info.name, "kind": kind, "fps": info.fps,
            "width": info.width, "height": info.height, "n_frames": n, "source": source,
            "created": info.created, "notes": list(notes), "crop_size": CROP_SIZE, "chin_pad": CHIN_PAD,
            "frame_files": self._frame_paths[0].suffix[1:],
        }
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        self._move_into_place()
        self._finished = info
        return info

    def _move_into_place(self) -> None:
        final = self.store.root / self.name
        if final.exists():
            if not self.overwrite:
                raise AvatarExistsError(self.store._exists_message(self.name))
            old = self.store.root / f".{self.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            try:
                self.tmp.rename(final)
            except OSError:
                old.rename(final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(final)


def _info_from_meta(meta: dict[str, Any]) -> AvatarInfo:
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"kind {meta['kind']!r}")
    return AvatarInfo(
        name=str(meta["name"]), kind=str(meta["kind"]), frames=int(meta["n_frames"]), fps=float(meta["fps"]),
        width=int(meta["width"]), height=int(meta["height"]), created=str(meta["created"]),
        source=str(meta.get("source", "")), notes=tuple(str(n) for n in meta.get("notes", ())),
    )


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _read_frames(paths: list[Path], height: int, width: int) -> np.ndarray:
    frames = np.empty((len(paths), height, width, 3), dtype=np.uint8)

    def read(i: int) -> None:
        image = _read_image(paths[i])
        if image.shape != (height, width, 3):
            raise ValueError(f"{paths[i].name} is {image.shape[1]}x{image.shape[0]}, expected {width}x{height}")
        frames[i] = image

    if len(paths) == 1:
        read(0)
    else:
        # Pillow releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(read, range(len(paths))))
    return frames


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
