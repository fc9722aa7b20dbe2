"""Turn a photo or a short video into a prepared avatar folder (layout: see models/avatar/store.py).

A video is decoded with PyAV (any container/codec FFmpeg reads, phone rotation applied),
resampled to a fixed frame rate, and scaled so its longer side is at most `max_side`. The
face is found in every frame by dlib on a downscaled copy (scaled so the face stays well
above the detector's minimum) and its 68 landmarks are predicted at full resolution. A few
frames without a face are interpolated; landmarks and boxes are then smoothed over time.
"""
from __future__ import annotations

import io
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np

from models.avatar.landmarks import (
    FaceDetectionError,
    FaceLandmarks,
    FaceTooSmallError,
    LandmarkDetector,
    MultipleFacesError,
    NoFaceError,
    single_face,
)
from models.avatar.store import (
    CHIN_PAD,
    CROP_SIZE,
    AvatarExistsError,
    AvatarInfo,
    AvatarNameError,
    AvatarStore,
    AvatarStoreError,
    validate_name,
)

log = logging.getLogger(__name__)

Source = Union[Path, str, bytes]
ProgressFn = Callable[[int, int, str], None]

MAX_MISSING_FRACTION = 0.10  # frames without a usable face that may be interpolated
MOUTH = slice(48, 68)
SIGMA_FACE = 2.0    # frames; jaw, brows, nose and eyes jitter more than they move
SIGMA_MOUTH = 0.75  # frames; light, so real mouth motion in the source survives
SIGMA_BOX = 2.5     # frames; a steady crop matters more than following every twitch
_DETECTOR_WINDOW = 80  # px: dlib's HOG face detector does not find faces smaller than its window
_SUPPORTED = "use a PNG/JPEG/WebP photo or an MP4/MOV/WebM/MKV video"


class _MissingFacesError(NoFaceError):
    """A face in most frames, but too many frames without one."""


class PrepareError(ValueError):
    """The input cannot become an avatar; the message names the cause and the fix.

    reason: unreadable | empty | too_large | no_face | several_faces | face_too_small | missing_faces | name | exists
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        # Whole across processes (preparation runs in a worker): message and reason both.
        return type(self), (str(self), self.reason)


def prepare(
    source: Source,
    name: str,
    store: AvatarStore,
    detector: LandmarkDetector | None = None,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    source_name: str | None = None,
    **video_options: float,
) -> AvatarInfo:
    """A photo or a video, whichever the file turns out to be (an animated GIF counts as a video)."""
    what = _describe(source, source_name)
    _check_target(store, name, overwrite)
    data = _read_bytes(source, what)
    refuse_huge_image(data, what)  # before anything decodes it, Pillow or FFmpeg
    image_error = _sniff_image(data)
    if image_error is None:
        return prepare_image(data, name, store, detector, progress, overwrite=overwrite, source_name=what)
    try:
        return prepare_video(data, name, store, detector=detector, progress=progress, overwrite=overwrite,
                             source_name=what, **video_options)
    except PrepareError as err:
        if err.reason == "unreadable":
            raise PrepareError(f"{err} (as an image: {image_error})", "unreadable") from err
        raise


def prepare_image(
    source: Source,
    name: str,
    store: AvatarStore,
    detector: LandmarkDetector | None = None,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    max_side: int = 720,
    min_face: int = 64,
    source_name: str | None = None,
) -> AvatarInfo:
    """Prepare a still photo: one lossless frame, its landmarks, face box and face crop."""
    report = _Progress(progress)
    what = _describe(source, source_name)
    _check_target(store, name, overwrite)
    rgb, scaled_from = _decode_image(_read_bytes(source, what), what, max_side)
    report(0, 1, "finding the face")
    detector = detector or LandmarkDetector()
    with _prepare_errors():
        try:
            face = single_face(detector.detect(rgb), min_size=min_face, what=what)
        except FaceTooSmallError as err:
            if scaled_from is None:
                raise
            raise FaceTooSmallError(f"{err} (measured after scaling the {scaled_from[0]}x{scaled_from[1]} "
                                    f"image down to {rgb.shape[1]}x{rgb.shape[0]})") from err
        height, width = rgb.shape[:2]
        landmarks = face.points.astype(np.float32)[None]
        boxes = round_boxes(face_boxes(landmarks), width, height)
        with store.writer(name, overwrite) as out:
            out.add_frame(rgb, lossless=True)
            crops = face_crop(rgb, boxes[0])[None]
            notes = (f"scaled down from {scaled_from[0]}x{scaled_from[1]}",) if scaled_from else ()
            info = out.finish("photo", 0.0, landmarks, boxes, crops, source=what, notes=notes)
    report(1, 1, "saved")
    return info


def prepare_video(
    source: Source,
    name: str,
    store: AvatarStore,
    max_seconds: float = 10.0,
    target_fps: float = 25.0,
    max_side: int = 720,
    detector: LandmarkDetector | None = None,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    min_face: int = 64,
    source_name: str | None = None,
) -> AvatarInfo:
    """Prepare a short video: at most max_seconds (a longer one is trimmed, with a note) at
    target_fps, frames scaled to at most max_side, one face tracked through every frame."""
    import av

    report = _Progress(progress)
    what = _describe(source, source_name)
    _check_target(store, name, overwrite)
    if max_seconds <= 0 or target_fps <= 0 or max_side < 16:
        raise ValueError(f"need max_seconds > 0, target_fps > 0 and max_side >= 16, got "
                         f"{max_seconds}, {target_fps}, {max_side}")
    container = _open_video(_read_bytes(source, what), what)
    try:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams})
            if not kinds:
                raise PrepareError(_empty_message(what), "empty")
            raise PrepareError(f"{what} holds no video stream (only {', '.join(kinds)}); {_SUPPORTED}", "empty")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        refuse_huge_video(stream, duration, what)
        max_frames = max(1, int(round(max_seconds * target_fps)))
        expected = min(max_frames, int(round(duration * target_fps))) if duration else 0
        detector = detector or LandmarkDetector()
        tracker = _FaceTracker(detector, min_face, what, expected, max_side, target_fps)
        resampler = FrameResampler(target_fps, max_frames)
        notes: list[str] = []
        with _prepare_errors(), store.writer(name, overwrite) as out:
            rgb, shown_size, out_size = None, (0, 0), None
            decoded = _decode(container, stream, what, notes, av.FFmpegError)
            for frame, repeat in resampler.frames(decoded):
                if not repeat:
                    if out_size is None:
                        # Fixed by the first frame: a stream that changes resolution midway still gives one size.
                        shown_size = displayed_size(frame)
                        out_size = fit_size(shown_size, max_side)
                    rgb = video_frame_rgb(frame, out_size)
                    tracker.add(rgb)
                else:
                    tracker.repeat()
                out.add_frame(rgb)
                report(out.n_frames, max(expected, out.n_frames), "finding the face in each frame")
            n = out.n_frames
            if n == 0:
                raise PrepareError(_empty_message(what), "empty")
            landmarks = tracker.landmarks()
            report(n, n, "smoothing landmarks")
            landmarks = smooth_landmarks(landmarks)
            height, width = rgb.shape[:2]
            boxes = round_boxes(smooth_track(face_boxes(landmarks), SIGMA_BOX), width, height)
            crops = np.empty((n, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
            for i in range(n):
                crops[i] = face_crop(out.read_frame(i), boxes[i])
                report(i + 1, n, "cutting face crops")
            if resampler.trimmed:
                length = f"{duration:.1f} s long" if duration else f"longer than {max_seconds:g} s"
                notes.append(f"the video is {length}; kept its first {max_seconds:g} s (max_seconds)")
            if tracker.missing:
                notes.append(f"no face found in {len(tracker.missing)} of {n} frames; their landmarks were "
                             "interpolated from the neighbouring frames")
            if shown_size != (width, height):
                notes.append(f"scaled down from {shown_size[0]}x{shown_size[1]}")
            for note in notes:
                log.info("avatar '%s': %s", name, note)
            info = out.finish("video", float(target_fps), landmarks, boxes, crops, source=what, notes=tuple(notes))
    finally:
        container.close()
    report(n, n, "saved")
    return info


# ---------------------------------------------------------------- geometry


def face_boxes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks -> (N, 4) float boxes by PhotoAvatar.face_box's recipe, before rounding."""
    lo = landmarks.min(axis=1).astype(np.float64)
    hi = landmarks.max(axis=1).astype(np.float64)
    w, h = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    return np.stack([lo[:, 0] - 0.1 * w, lo[:, 1] - 0.25 * h, hi[:, 0] + 0.1 * w, hi[:, 1] + 0.08 * h], axis=1)


def round_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float boxes -> int32 boxes inside the frame, rounded outwards (as PhotoAvatar.face_box does)."""
    out = np.empty(boxes.shape, dtype=np.int32)
    out[:, 0] = np.clip(np.trunc(boxes[:, 0]), 0, width - 2)
    out[:, 1] = np.clip(np.trunc(boxes[:, 1]), 0, height - 2)
    out[:, 2] = np.clip(np.ceil(boxes[:, 2]), out[:, 0] + 2, width)
    out[:, 3] = np.clip(np.ceil(boxes[:, 3]), out[:, 1] + 2, height)
    return out


def face_crop(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box plus CHIN_PAD rows below, resized to CROP_SIZE x CROP_SIZE, as uint8 BGR."""
    from PIL import Image

    x0, y0, x1, y1 = (int(v) for v in box)
    y1 = min(rgb.shape[0], y1 + CHIN_PAD)
    region = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    resized = np.asarray(region.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(resized[:, :, ::-1])


def smooth_track(values: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth (N, ...) values over the first axis by a Gaussian-weighted local linear fit.

    In the middle this is a centred Gaussian average; unlike a plain average it neither
    lags nor flattens steady motion at the ends of the clip.
    """
    n = len(values)
    if n < 3 or sigma <= 0:
        return values.astype(np.float64)
    t = np.arange(n, dtype=np.float64)
    d = t[None, :] - t[:, None]
    w = np.exp(-0.5 * (d / sigma) ** 2)
    w[np.abs(d) > 3.0 * sigma] = 0.0
    s0, s1, s2 = w.sum(axis=1), (w * d).sum(axis=1), (w * d * d).sum(axis=1)
    det = s0 * s2 - s1 * s1
    kernel = w * (s2[:, None] - s1[:, None] * d) / np.where(det > 1e-9, det, 1.0)[:, None]
    flat_kernel = w / s0[:, None]
    kernel = np.where((det > 1e-9)[:, None], kernel, flat_kernel)
    flat = values.reshape(n, -1).astype(np.float64)
    return (kernel @ flat).reshape(values.shape)


def smooth_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> smoothed float32: the mouth lightly, the rest of the face more."""
    out = smooth_track(landmarks, SIGMA_FACE)
    out[:, MOUTH] = smooth_track(landmarks[:, MOUTH], SIGMA_MOUTH)
    return out.astype(np.float32)


def interpolate_missing(points: list[np.ndarray | None]) -> np.ndarray:
    """Fill frames without landmarks linearly from their neighbours (the nearest one at the ends)."""
    known = [i for i, p in enumerate(points) if p is not None]
    if not known:
        raise ValueError("no frame has landmarks")
    stack = np.stack([points[i] for i in known]).astype(np.float64)
    t = np.arange(len(points), dtype=np.float64)
    flat = stack.reshape(len(known), -1)
    filled = np.stack([np.interp(t, known, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return filled.reshape((len(points),) + stack.shape[1:]).astype(np.float32)


# ---------------------------------------------------------------- faces through a video


class _FaceTracker:
    """The one face of every frame: dlib detection on a downscaled copy, landmarks at full size."""

    def __init__(self, detector: LandmarkDetector, min_face: int, what: str, expected: int, max_side: int,
                 fps: float) -> None:
        self.detector = detector
        self.fps = fps
        self.min_face = min_face
        self.what = what
        self.max_side = max_side
        # With an estimate of the length, a hopeless video fails after 10 % of it, not at the end.
        self.allowed = int(MAX_MISSING_FRACTION * expected) if expected else None
        self.scale: float | None = None
        self.points: list[np.ndarray | None] = []
        self.missing: list[int] = []
        self.several: list[int] = []
        self.most_faces = 0
        self._last_center: np.ndarray | None = None

    def add(self, rgb: np.ndarray) -> None:
        faces = self._find(rgb)
        if not faces:
            self.points.append(None)
            self.missing.append(len(self.points) - 1)
            self._check(final=False)
            return
        if len(faces) > 1:
            self.several.append(len(self.points))
            self.most_faces = max(self.most_faces, len(faces))
        face = self._nearest(faces)
        self._last_center = _center(face.box)
        self.points.append(face.points.astype(np.float32))
        self._check(final=False)

    def repeat(self) -> None:
        """The same picture as the previous frame (a source slower than the target rate)."""
        self.points.append(self.points[-1])
        if self.points[-1] is None:
            self.missing.append(len(self.points) - 1)
        if self.several and self.several[-1] == len(self.points) - 2:
            self.several.append(len(self.points) - 1)

    def landmarks(self) -> np.ndarray:
        self._check(final=True)
        return interpolate_missing(self.points)

    def _find(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        if self.scale is None:
            faces = self.detector.detect(rgb)
            if faces:
                self._set_scale(faces)
            return faces
        if self.scale < 1.0:
            faces = self._detect_scaled(rgb)
            if faces:
                return faces
        # Missed on the small copy (a turned or smaller face): one more try at full size.
        return self.detector.detect(rgb)

    def _set_scale(self, faces: list[FaceLandmarks]) -> None:
        size = max(f.size for f in faces)
        if size < self.min_face:
            raise FaceTooSmallError(
                f"the face in {self.what} is {size} px across (in frames of at most {self.max_side} px), below "
                f"the {self.min_face} px minimum; use a closer shot, or a larger max_side for a high-resolution video"
            )
        # Detect where the face is 1.5x the smallest one dlib finds: safe if it shrinks a bit, and cheap.
        smallest = _DETECTOR_WINDOW / 2 ** max(0, int(getattr(self.detector, "upsample", 1)))
        self.scale = min(1.0, 1.5 * smallest / size)

    def _detect_scaled(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        from PIL import Image

        height, width = rgb.shape[:2]
        small_size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        small = np.asarray(Image.fromarray(rgb).resize(small_size, Image.Resampling.BILINEAR))
        sx, sy = width / small_size[0], height / small_size[1]
        faces = []
        for found in self.detector.detect(small):
            left, top, right, bottom = found.box
            box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
            faces.append(FaceLandmarks(box=box, score=found.score, points=found.points))
        if len(faces) > 1:
            tracked = self._nearest(faces)
            faces = [tracked] + [f for f in faces if f is not tracked]
        if faces:
            # Only the tracked face gets landmarks at full resolution; the others are only counted.
            best = faces[0]
            faces[0] = FaceLandmarks(box=best.box, score=best.score,
                                     points=self.detector.landmarks_in(rgb, best.box))
        return faces

    def _nearest(self, faces: list[FaceLandmarks]) -> FaceLandmarks:
        if self._last_center is None:
            return max(faces, key=lambda f: f.size)
        return min(faces, key=lambda f: float(np.linalg.norm(_center(f.box) - self._last_center)))

    def _check(self, final: bool) -> None:
        n = len(self.points)
        if final:
            allowed = int(MAX_MISSING_FRACTION * n)
        elif self.allowed is None:
            return
        else:
            allowed = self.allowed
        if len(self.missing) == n and n > allowed:
            raise NoFaceError(
                f"no face found in {_frames_phrase(n, n, final)} of {self.what}; use a video where one "
                f"frontal, well-lit face at least {self.min_face} px across is visible throughout"
            )
        if len(self.missing) > allowed:
            raise _MissingFacesError(
                f"no face found in {_frames_phrase(len(self.missing), n, final)} of {self.what} (the first at "
                f"{self.missing[0] / self.fps:.2f} s; at most {MAX_MISSING_FRACTION:.0%} of the frames may miss it); "
                "use a video where the face stays frontal and in view, or cut the parts where it turns away or leaves"
            )
        if len(self.several) > allowed:
            raise MultipleFacesError(
                f"{self.most_faces} faces found in {_frames_phrase(len(self.several), n, final)} of {self.what}; "
                "use a video that shows only the one person to animate, or crop it to them"
            )


def _frames_phrase(count: int, seen: int, final: bool) -> str:
    """'3 of 20 frames', '3 of the first 13 frames', 'all 5 frames', 'the first frame'."""
    if count == seen:
        if final:
            return "the only frame" if seen == 1 else f"all {seen} frames"
        return "the first frame" if seen == 1 else f"the first {seen} frames"
    return f"{count} of {seen} frames" if final else f"{count} of the first {seen} frames"


class FrameResampler:
    """Source frames (with their times) -> frames at a fixed rate, nearest in time."""

    def __init__(self, fps: float, max_frames: int) -> None:
        self.fps = fps
        self.max_frames = max_frames
        self.trimmed = False

    def frames(self, timed: Iterator[tuple[float, object]]) -> Iterator[tuple[object, bool]]:
        """Yields (frame, repeat): repeat is True when it is the same source frame as the last one."""
        k = 0
        prev, prev_t, step = None, 0.0, 1.0 / self.fps
        last_yielded = None
        for t, frame in timed:
            if prev is not None:
                if t <= prev_t:
                    continue  # duplicate or out-of-order timestamp: keep the first
                step = t - prev_t
                middle = 0.5 * (prev_t + t)
                while k / self.fps < middle:
                    if k >= self.max_frames:
                        self.trimmed = True
                        return
                    yield prev, prev is last_yielded
                    last_yielded = prev
                    k += 1
            prev, prev_t = frame, t
        if prev is None:
            return
        # The last source frame lasts as long as the gap before it; round to whole output frames.
        total = max(1, int(math.floor((prev_t + step) * self.fps + 0.5)))
        while k < min(total, self.max_frames):
            yield prev, prev is last_yielded
            last_yielded = prev
            k += 1


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the longer side is at most max_side, both even."""
    scale = min(1.0, max_side / max(size))
    return _even(size[0] * scale), _even(size[1] * scale)


def video_frame_rgb(frame, size: tuple[int, int]) -> np.ndarray:
    """A decoded av.VideoFrame as upright (H, W, 3) uint8 RGB of the given (width, height)."""
    turns = _quarter_turns(frame)
    out_w, out_h = size
    src_w, src_h = (out_h, out_w) if turns % 2 else (out_w, out_h)
    shrinking = src_w * src_h < frame.width * frame.height
    options = {"src_color_range": frame.color_range} if frame.color_range else {}
    rgb = frame.reformat(width=src_w, height=src_h, format="rgb24",
                         interpolation="AREA" if shrinking else "BILINEAR", **options).to_ndarray()
    if turns:
        rgb = np.rot90(rgb, turns)
    return np.ascontiguousarray(rgb)


def displayed_size(frame) -> tuple[int, int]:
    """(width, height) of a decoded frame as it is meant to be shown, rotation applied."""
    return (frame.height, frame.width) if _quarter_turns(frame) % 2 else (frame.width, frame.height)


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show the frame upright (phones store portrait video turned)."""
    return int(round((frame.rotation or 0) / 90.0)) % 4


# ---------------------------------------------------------------- input


def _describe(source: Source, source_name: str | None) -> str:
    if source_name:
        return source_name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the uploaded file"
    return Path(source).name


def _read_bytes(source: Source, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise PrepareError(f"{path} does not exist or is not a file; check the path", "unreadable")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PrepareError(f"cannot read {path}: {err.strerror or err}; check its permissions", "unreadable") from err
    if not data:
        raise PrepareError(f"{what} is empty (0 bytes); {_SUPPORTED}", "empty")
    return data


def _sniff_image(data: bytes) -> str | None:
    """None when Pillow reads `data` as a single still image, else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                return "an animated image"
            return None
    except UnidentifiedImageError:
        return "not an image format Pillow knows"
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return str(err)


MAX_IMAGE_PIXELS = 40_000_000       # 8000 x 5000: more than any camera a face is photographed with
MAX_VIDEO_PIXELS = 3840 * 2160       # 4K frames
MAX_VIDEO_SECONDS = 600.0            # a longer file is refused, not read (only the first 10 s are used)


def refuse_huge_image(data: bytes, what: str) -> None:
    """PrepareError (too_large) for an image whose header declares more than MAX_IMAGE_PIXELS, read
    from the header alone: a 445 KB PNG may decode to 12000 x 12000 pixels (1.4 GB)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is judged here
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        raise PrepareError(f"{what} is too large an image to decode ({err}); use a photo of at most "
                           f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels", "too_large") from None
    except Exception:  # not an image Pillow knows: the video path decides
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise PrepareError(f"{what} is {width}x{height} px ({width * height / 1e6:.0f} megapixels); the limit is "
                           f"{MAX_IMAGE_PIXELS // 1_000_000}: scale it down first", "too_large")


def refuse_huge_video(stream, duration: float, what: str) -> None:
    """PrepareError (too_large) for a video whose header declares frames or a length over the limits."""
    width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
    if width * height > MAX_VIDEO_PIXELS:
        raise PrepareError(f"{what} has {width}x{height} frames; the limit is 3840x2160 (4K): scale it down first",
                           "too_large")
    if duration > MAX_VIDEO_SECONDS:
        raise PrepareError(f"{what} lasts {duration:.0f} s; the limit is {MAX_VIDEO_SECONDS:.0f} s "
                           "(only the first 10 s are used): cut it first", "too_large")


def _decode_image(data: bytes, what: str, max_side: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Upright RGB with even sizes, scaled to at most max_side; and the original size if it was scaled."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    refuse_huge_image(data, what)
    try:
        with Image.open(io.BytesIO(data)) as im:
            stored_size = im.size
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced size directly
            drafted_size = im.size
            upright = ImageOps.exif_transpose(im).convert("RGB")
    except UnidentifiedImageError as err:
        raise PrepareError(f"not an image or video that can be decoded: {what} (not an image format Pillow "
                           f"knows); {_SUPPORTED}", "unreadable") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PrepareError(f"not an image or video that can be decoded: {what} ({err}); {_SUPPORTED}",
                           "unreadable") from err
    width, height = upright.size
    turned = (width, height) != drafted_size
    original = (stored_size[1], stored_size[0]) if turned else stored_size
    if max(width, height) > max_side or original != (width, height):
        scale = max_side / max(width, height) if max(width, height) > max_side else 1.0
        resized = upright.resize((_even(width * scale), _even(height * scale)), Image.Resampling.LANCZOS)
        return np.asarray(resized, dtype=np.uint8), original
    if width < 16 or height < 16:
        raise PrepareError(f"{what} is only {width}x{height} px; use a photo where the face is at least "
                           "about 80 px across", "face_too_small")
    rgb = np.asarray(upright, dtype=np.uint8)
    # An odd size loses one pixel row/column rather than being resampled (yuv420p needs even sizes).
    return np.ascontiguousarray(rgb[: height - height % 2, : width - width % 2]), None


def _empty_message(what: str) -> str:
    return f"{what} holds no video frames (an empty or zero-length video); record a few seconds of video of the face"


def _open_video(data: bytes, what: str):
    import av

    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.error.EOFError as err:
        raise PrepareError(_empty_message(what), "empty") from err
    except (av.FFmpegError, OSError, ValueError) as err:
        raise PrepareError(f"not an image or video that can be decoded: {what} ({_av_reason(err)}); {_SUPPORTED}",
                           "unreadable") from err


def _decode(container, stream, what: str, notes: list[str], ffmpeg_error: type) -> Iterator[tuple[float, object]]:
    """(time in seconds from the first frame, frame) in presentation order; a broken tail ends the video."""
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    index = 0
    t0 = None
    try:
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else index / rate
            t0 = t if t0 is None else t0
            index += 1
            yield t - t0, frame
    except ffmpeg_error as err:
        if index == 0:
            raise PrepareError(f"not an image or video that can be decoded: {what} ({_av_reason(err)}); "
                               f"{_SUPPORTED}", "unreadable") from err
        notes.append(f"decoding stopped after {index} source frames ({_av_reason(err)}); kept those")


def _duration(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return 0.0


def _av_reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _check_target(store: AvatarStore, name: str, overwrite: bool) -> None:
    with _prepare_errors():
        validate_name(name)
        if not overwrite and store.exists(name):
            store.writer(name, overwrite)  # raises AvatarExistsError with the store's message


# Most specific first: the reason the server maps to an HTTP status.
_ERROR_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (_MissingFacesError, "missing_faces"),
    (NoFaceError, "no_face"),
    (MultipleFacesError, "several_faces"),
    (FaceTooSmallError, "face_too_small"),
    (FaceDetectionError, "no_face"),
    (AvatarNameError, "name"),
    (AvatarExistsError, "exists"),
    (AvatarStoreError, "store"),
)


@contextmanager
def _prepare_errors() -> Iterator[None]:
    """Face and store errors -> PrepareError with a reason the server can map to a status."""
    try:
        yield
    except PrepareError:
        raise
    except tuple(kind for kind, _ in _ERROR_REASONS) as err:
        reason = next(reason for kind, reason in _ERROR_REASONS if isinstance(err, kind))
        raise PrepareError(str(err), reason) from err


class _Progress:
    def __init__(self, callback: ProgressFn | None) -> None:
        self.callback = callback

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.callback is not None:
            self.callback(done, total, message)


def _center(box: tuple[int, int, int, int]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def _even(value: float) -> int:
    return max(2, int(math.floor(value / 2.0)) * 2)
