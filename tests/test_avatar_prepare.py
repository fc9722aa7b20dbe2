"""Avatar preparation with real dlib on the scikit-image astronaut: photos, generated videos
(shifted and zoomed, phone portrait with a rotation matrix), every bad input, and the CLI."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from skimage import data

from models.avatar.landmarks import LandmarkDetector
from models.avatar.photo import PhotoAvatar
from models.avatar.prepare import (
    FrameResampler,
    PrepareError,
    face_crop,
    prepare,
    prepare_image,
    prepare_video,
    smooth_track,
)
from models.avatar.store import (
    CROP_SIZE,
    AvatarNameError,
    AvatarNotFoundError,
    AvatarStore,
    default_avatar_dir,
    name_from_filename,
)

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHIFT_PX = 2.0   # per frame, to the right
ZOOM = 0.002     # per frame, about the image centre


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return LandmarkDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_marks(detector, astronaut) -> np.ndarray:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0].points


@pytest.fixture
def store(tmp_path) -> AvatarStore:
    return AvatarStore(tmp_path / "avatars")


def moved(rgb: np.ndarray, k: int, size: int) -> np.ndarray:
    """Frame k of the test clip: shifted right by SHIFT_PX*k and zoomed by (1 + ZOOM*k) about the centre."""
    zoom, dx, c = 1.0 + ZOOM * k, SHIFT_PX * k, size / 2.0
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    coeffs = (1 / zoom, 0.0, c - (c + dx) / zoom, 0.0, 1 / zoom, c - c / zoom)
    image = Image.fromarray(rgb).transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    return np.asarray(image)


def moved_points(points: np.ndarray, k: int, size: int) -> np.ndarray:
    zoom, c = 1.0 + ZOOM * k, size / 2.0
    return (points - c) * zoom + c + np.array([SHIFT_PX * k, 0.0])


def encode(path: Path, frames: list[np.ndarray], fps: int = 25, codec: str = "libx264") -> Path:
    """Write RGB frames as a video file (H.264 at high quality unless told otherwise)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "ultrafast"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def face_crop_320(astronaut: np.ndarray) -> np.ndarray:
    """A 320x320 cut of the astronaut around her face: small frames keep the video tests quick."""
    return np.ascontiguousarray(astronaut[0:320, 96:416])


def assert_nothing_left(store: AvatarStore) -> None:
    leftovers = sorted(p.name for p in store.root.iterdir()) if store.root.exists() else []
    assert leftovers == [], f"left behind: {leftovers}"


# ---------------------------------------------------------------- photo


def test_photo_loads_back_with_the_same_landmarks(tmp_path, store, detector, astronaut, astronaut_marks):
    source = tmp_path / "Eileen Collins.png"
    Image.fromarray(astronaut).save(source)
    seen = []
    info = prepare_image(source, "eileen", store, detector, progress=lambda d, t, m: seen.append((d, t, m)))

    assert (info.name, info.kind, info.frames, info.size, info.source) == (
        "eileen", "photo", 1, (512, 512), "Eileen Collins.png")
    assert seen[-1] == (1, 1, "saved")
    assert store.exists("eileen") and [i.name for i in store.list()] == ["eileen"]
    folder = store.root / "eileen"
    assert sorted(p.name for p in folder.iterdir()) == ["avatar.json", "boxes.npy", "crops.npy", "frames",
                                                        "landmarks.npy"]
    assert [p.name for p in (folder / "frames").iterdir()] == ["000000.png"]

    avatar = store.load("eileen")
    assert avatar.kind == "photo" and avatar.frames.shape == (1, 512, 512, 3)
    np.testing.assert_array_equal(avatar.frames[0], astronaut)  # PNG: lossless
    np.testing.assert_array_equal(avatar.landmarks[0], astronaut_marks)
    photo = avatar.photo()
    assert isinstance(photo, PhotoAvatar) and photo.name == "eileen"
    np.testing.assert_array_equal(photo.landmarks, astronaut_marks)
    assert tuple(avatar.boxes[0]) == photo.face_box

    x0, y0, x1, y1 = avatar.boxes[0]
    crop = avatar.crops[0]
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    # BGR: the crop's first channel is the blue of the face region (+10 px below for the chin).
    region = astronaut[y0:y1 + 10, x0:x1].astype(float)
    assert abs(crop[..., 0].mean() - region[..., 2].mean()) < 3
    assert abs(crop[..., 2].mean() - region[..., 0].mean()) < 3

    store.delete("eileen")
    assert not store.exists("eileen") and store.list() == []
    assert_nothing_left(store)


def test_large_photo_is_scaled_down_and_kept_even(store, detector, astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1001, 1001), Image.Resampling.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=95)
    info = prepare(buffer.getvalue(), "big", store, detector, source_name="upload.jpg")
    assert (info.kind, info.size, info.source) == ("photo", (720, 720), "upload.jpg")
    assert any("scaled down from 1001x1001" in note for note in info.notes)


def test_existing_name_needs_overwrite_and_bad_names_are_refused(tmp_path, store, detector, astronaut):
    source = tmp_path / "a.png"
    Image.fromarray(astronaut).save(source)
    prepare_image(source, "same", store, detector)
    created = store.info("same").created
    with pytest.raises(PrepareError, match="already exists.*--overwrite") as err:
        prepare_image(source, "same", store, detector)
    assert err.value.reason == "exists"
    Image.fromarray(face_crop_320(astronaut)).save(source)
    info = prepare_image(source, "same", store, detector, overwrite=True)
    assert info.size == (320, 320) and store.load("same").frames.shape == (1, 320, 320, 3)
    assert [p.name for p in store.root.iterdir()] == ["same"] and created

    for bad in ("", "a b", "../x", "é", "x" * 65, ".hidden"):
        with pytest.raises(PrepareError, match="invalid avatar name") as err:
            prepare_image(source, bad, store, detector)
        assert err.value.reason == "name"
    with pytest.raises(AvatarNameError):
        store.load("a/b")
    with pytest.raises(AvatarNotFoundError, match="not found"):
        store.delete("nobody")
    assert name_from_filename("My photo (1).JPG") == "My-photo-1"


def test_failure_midway_leaves_the_old_avatar_and_no_partial(tmp_path, store, detector, astronaut):
    source = tmp_path / "a.png"
    Image.fromarray(astronaut).save(source)
    prepare_image(source, "keep", store, detector)
    video = encode(tmp_path / "clip.mp4", [face_crop_320(astronaut)] * 6)

    def fail(done: int, total: int, message: str) -> None:
        if done == 3:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        prepare_video(video, "keep", store, detector=detector, progress=fail, overwrite=True)
    assert [p.name for p in store.root.iterdir()] == ["keep"]
    assert store.load("keep").frames.shape == (1, 512, 512, 3)


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_avatar_dir() == tmp_path / "avatar-server" / "avatars"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_avatar_dir() == Path.home() / ".local" / "share" / "avatar-server" / "avatars"


# ---------------------------------------------------------------- video


@pytest.fixture(scope="module")
def shifted_video(tmp_path_factory, astronaut) -> Path:
    """2 s at 25 fps of the 512x512 astronaut moving right 2 px and zooming 0.2 % per frame."""
    frames = [moved(astronaut, k, 512) for k in range(50)]
    return encode(tmp_path_factory.mktemp("video") / "moving.mp4", frames)


def test_video_landmarks_follow_the_motion(shifted_video, store, detector, astronaut_marks):
    seen = []
    info = prepare_video(shifted_video, "moving", store, detector=detector,
                         progress=lambda d, t, m: seen.append((d, t, m)))
    assert (info.kind, info.frames, info.fps, info.size) == ("video", 50, 25.0, (512, 512))
    assert info.notes == ()
    assert ("finding the face in each frame" in {m for _, _, m in seen}) and seen[-1] == (50, 50, "saved")
    assert sorted(p.name for p in (store.root / "moving" / "frames").iterdir())[-1] == "000049.jpg"

    avatar = store.load("moving")
    assert avatar.frames.shape == (50, 512, 512, 3)
    assert avatar.landmarks.shape == (50, 68, 2) and avatar.landmarks.dtype == np.float32
    assert avatar.boxes.shape == (50, 4) and avatar.crops.shape == (50, CROP_SIZE, CROP_SIZE, 3)

    expected = np.stack([moved_points(astronaut_marks, k, 512) for k in range(50)])
    error = np.linalg.norm(avatar.landmarks - expected, axis=2)  # (50, 68) px
    assert error.mean() < 1.5, error.mean()
    assert error.mean(axis=1).max() < 2.5
    # The head moved 98 px right over the clip; the smoothed landmarks say so at both ends.
    travel = avatar.landmarks[-1].mean(axis=0) - avatar.landmarks[0].mean(axis=0)
    expected_travel = expected[-1].mean(axis=0) - expected[0].mean(axis=0)
    np.testing.assert_allclose(travel, expected_travel, atol=2.0)
    # Smoothed: the nose moves steadily, with no frame-to-frame jitter beyond a pixel.
    nose_x = avatar.landmarks[:, 30, 0]
    assert np.abs(np.diff(nose_x, 2)).max() < 0.5
    # Boxes travel with the face and keep their size within a few pixels.
    centres = (avatar.boxes[:, 0] + avatar.boxes[:, 2]) / 2
    assert abs((centres[-1] - centres[0]) - expected_travel[0]) < 4
    widths = avatar.boxes[:, 2] - avatar.boxes[:, 0]
    assert widths.max() - widths.min() < 0.098 * widths.mean() + 4

    # The crops are the stored frames cut at the boxes.
    np.testing.assert_array_equal(avatar.crops[10], face_crop(avatar.frames[10], avatar.boxes[10]))
    assert avatar.photo(0).landmarks.shape == (68, 2)


def rotate_display_matrix(path: Path) -> None:
    """Give an MP4 the display matrix a phone writes for portrait video (stored turned, shown rotated 90°)."""
    raw = path.read_bytes()
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    rotated = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)
    at = raw.index(identity, raw.index(b"tkhd"))
    path.write_bytes(raw[:at] + rotated + raw[at + len(identity):])


def test_phone_portrait_video_is_turned_upright_scaled_resampled_and_trimmed(tmp_path, store, detector, astronaut):
    # A 720x1280 portrait shot at 30 fps for 1.5 s, stored turned into a 1280x720 landscape stream.
    portrait = np.asarray(Image.fromarray(astronaut[:, 112:400]).resize((720, 1280), Image.Resampling.BILINEAR))
    stored = np.rot90(portrait, 1)
    path = encode(tmp_path / "IMG_0001.mp4", [stored] * 45, fps=30)
    rotate_display_matrix(path)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == -90

    info = prepare_video(path, "phone", store, max_seconds=1.0, detector=detector)
    assert (info.frames, info.fps, info.size) == (25, 25.0, (404, 720))
    assert any("kept its first 1 s" in note for note in info.notes)
    assert any("scaled down from 720x1280" in note for note in info.notes)
    avatar = store.load("phone")
    # Upright: eyes above the nose above the mouth, face in the upper half of the portrait.
    marks = avatar.landmarks[0]
    assert marks[36:48, 1].mean() < marks[30, 1] < marks[48:68, 1].mean() < 0.6 * 720


def test_frames_resampled_to_the_target_rate():
    def timed(fps: float, seconds: float):
        return [(i / fps, i) for i in range(int(seconds * fps))]

    picks = list(FrameResampler(25, 1000).frames(iter(timed(50, 1.0))))
    assert [f for f, _ in picks] == list(range(0, 50, 2)) and not any(r for _, r in picks)
    picks = list(FrameResampler(25, 1000).frames(iter(timed(10, 1.0))))
    assert len(picks) == 25 and [f for f, _ in picks][:7] == [0, 0, 1, 1, 2, 2, 2]
    assert [r for _, r in picks][:7] == [False, True, False, True, False, True, True]
    resampler = FrameResampler(25, 25)
    assert len(list(resampler.frames(iter(timed(30, 3.0))))) == 25 and resampler.trimmed
    assert len(list(FrameResampler(25, 100).frames(iter([(0.0, "only")])))) == 1


def test_smoothing_keeps_steady_motion_and_removes_jitter():
    rng = np.random.default_rng(0)
    t = np.arange(60, dtype=np.float64)
    line = np.stack([3.0 * t + 5, -0.5 * t], axis=1)
    np.testing.assert_allclose(smooth_track(line, 2.0), line, atol=1e-9)  # no lag, even at the ends
    noisy = line + rng.normal(0, 1.0, line.shape)
    assert np.abs(smooth_track(noisy, 2.0) - line).std() < 0.6 * np.abs(noisy - line).std()


def test_a_few_frames_without_a_face_are_interpolated(tmp_path, store, detector, astronaut):
    face = face_crop_320(astronaut)
    blank = np.full_like(face, 128)
    frames = [face] * 8 + [blank] + [face] * 11
    info = prepare_video(encode(tmp_path / "blink.mp4", frames), "blink", store, detector=detector)
    assert info.frames == 20
    assert any("no face found in 1 of 20 frames" in note for note in info.notes)
    marks = store.load("blink").landmarks
    assert np.abs(marks[8] - marks[7]).max() < 1.5


def test_too_many_frames_without_a_face_is_an_error(tmp_path, store, detector, astronaut):
    face = face_crop_320(astronaut)
    blank = np.full_like(face, 128)
    frames = [face] * 10 + [blank] * 10
    with pytest.raises(PrepareError, match=r"no face found in 3 of the first 13 frames of gaps.mp4") as err:
        prepare_video(encode(tmp_path / "gaps.mp4", frames), "gaps", store, detector=detector)
    assert err.value.reason == "missing_faces"
    assert_nothing_left(store)


# ---------------------------------------------------------------- bad inputs


def _text_as_png(tmp_path: Path, astronaut: np.ndarray) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    return path


def _image(tmp_path: Path, rgb: np.ndarray, name: str) -> Path:
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


def _coffee(tmp_path, astronaut):
    return _image(tmp_path, data.coffee(), "coffee.png")


def _two_faces(tmp_path, astronaut):
    return _image(tmp_path, np.concatenate([astronaut, astronaut], axis=1), "pair.png")


def _small_face(tmp_path, astronaut):
    canvas = np.full((480, 640, 3), 200, np.uint8)
    canvas[100:356, 200:456] = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS))
    return _image(tmp_path, canvas, "far.png")


def _tiny_face(tmp_path, astronaut):
    canvas = np.full((480, 640, 3), 200, np.uint8)
    canvas[200:280, 280:360] = np.asarray(Image.fromarray(astronaut).resize((80, 80), Image.Resampling.LANCZOS))
    return _image(tmp_path, canvas, "tiny.png")


def _empty_video(tmp_path, astronaut):
    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def _zero_bytes(tmp_path, astronaut):
    path = tmp_path / "zero.mov"
    path.write_bytes(b"")
    return path


def _audio_only(tmp_path, astronaut):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    return path


def _video_of(rgb: np.ndarray, name: str):
    return lambda tmp_path, astronaut: encode(tmp_path / name, [rgb(astronaut)] * 5)


@pytest.mark.parametrize(
    "make, kind, reason, message",
    [
        (_text_as_png, "image", "unreadable", r"not an image or video that can be decoded: notes\.png"),
        (_text_as_png, "video", "unreadable", r"not an image or video that can be decoded: notes\.png"),
        (_coffee, "image", "no_face", r"no face found in coffee\.png; .*frontal"),
        (_two_faces, "image", "several_faces", r"2 faces found in pair\.png .*crop the photo"),
        (_small_face, "image", "face_too_small", r"face in far\.png is \d\d px across, below the 64 px minimum"),
        (_tiny_face, "image", "no_face", r"no face found in tiny\.png; .*at least about 80 pixels across"),
        (_empty_video, "video", "empty", r"empty\.mp4 holds no video frames \(an empty or zero-length video\)"),
        (_zero_bytes, "video", "empty", r"zero\.mov is empty \(0 bytes\)"),
        (_audio_only, "video", "empty", r"voice\.m4a holds no video stream \(only audio\)"),
        (_video_of(lambda a: data.coffee()[:320, :320], "cup.mp4"), "video", "no_face",
         r"no face found in the first frame of cup\.mp4; use a video where one frontal"),
        (_video_of(lambda a: np.concatenate([face_crop_320(a)] * 2, axis=1), "pair.mp4"), "video",
         "several_faces", r"2 faces found in the first frame of pair\.mp4; .*only the one person"),
        (_video_of(lambda a: np.asarray(Image.fromarray(a).resize((256, 256))), "far.mp4"), "video",
         "face_too_small", r"face in far\.mp4 is \d\d px across .*below the 64 px minimum"),
    ],
    ids=["text-as-png", "text-as-video", "no-face", "two-faces", "small-face", "tiny-face", "empty-video",
         "zero-bytes", "audio-only", "video-no-face", "video-two-faces", "video-small-face"],
)
def test_bad_input_is_refused_with_its_cause(tmp_path, store, detector, astronaut, make, kind, reason, message):
    path = make(tmp_path, astronaut)
    with pytest.raises(PrepareError, match=message) as err:
        if kind == "image":
            prepare_image(path, "bad", store, detector)
        else:
            prepare_video(path, "bad", store, detector=detector)
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)
    assert_nothing_left(store)
    # prepare() tells photos from videos itself and reaches the same verdict.
    with pytest.raises(PrepareError) as err:
        prepare(path.read_bytes(), "bad", store, detector, source_name=path.name)
    assert err.value.reason == reason
    assert_nothing_left(store)


def test_missing_file_is_named(store, tmp_path):
    with pytest.raises(PrepareError, match="does not exist"):
        prepare_image(tmp_path / "nope.png", "x", store)
    with pytest.raises(AvatarNotFoundError, match="avatar 'x' not found"):
        store.load("x")


# ---------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.avatar", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_cli_prepares_lists_deletes_and_fails_with_one_line(tmp_path, astronaut):
    photo = _image(tmp_path, face_crop_320(astronaut), "Anna Photo.png")
    avatars = tmp_path / "avatars"
    done = run_cli("prepare", "--image", str(photo), env={"AVATAR_AVATAR_DIR": str(avatars)})
    assert done.returncode == 0, done.stderr
    assert "prepared avatar 'Anna-Photo' (photo, 320x320)" in done.stdout
    assert (avatars / "Anna-Photo" / "avatar.json").is_file()

    listed = run_cli("list", "--avatar-dir", str(avatars))
    assert listed.returncode == 0 and "Anna-Photo" in listed.stdout and "photo" in listed.stdout

    again = run_cli("prepare", "--image", str(photo), "--avatar-dir", str(avatars))
    assert again.returncode == 2 and "already exists" in again.stderr

    bad = run_cli("prepare", "--image", str(_text_as_png(tmp_path, astronaut)), "--name", "bad",
                  "--avatar-dir", str(avatars))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: not an image or video that can be decoded")
    assert "Traceback" not in bad.stderr
    assert sorted(p.name for p in avatars.iterdir()) == ["Anna-Photo"]

    gone = run_cli("delete", "Anna-Photo", "--avatar-dir", str(avatars))
    assert gone.returncode == 0 and not (avatars / "Anna-Photo").exists()
