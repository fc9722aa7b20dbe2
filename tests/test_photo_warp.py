"""The default renderer's mouth on the real astronaut photo, checked with real dlib landmarks.

The renderer here is the still one (life=None): blinks, sway and nods, and video avatars,
are tested in tests/test_avatar_life.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.avatar.landmarks import (
    FaceTooSmallError,
    LandmarkDetector,
    MultipleFacesError,
    NoFaceError,
    single_face,
)
from models.avatar.photo import PhotoAvatar
from models.lipsync.mouth import BITE, N_MOUTH_PARAMS, OPEN, PRESS
from models.lipsync.photo_warp import PhotoWarpRenderer
from models.lipsync.yuv import rgb_to_yuv420, yuv420_to_rgb
from models.speech import PhonemeTiming, SpeechChunk

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 25


@pytest.fixture(scope="module")
def renderer(avatar) -> PhotoWarpRenderer:
    return PhotoWarpRenderer(avatar, fps=FPS, device="cpu", life=None)


def shape(**values: float) -> np.ndarray:
    from models.lipsync.mouth import MOUTH_PARAMS

    row = np.zeros((1, N_MOUTH_PARAMS), dtype=np.float32)
    for name, value in values.items():
        row[0, MOUTH_PARAMS.index(name)] = value
    return row


def luma(frame: np.ndarray, height: int) -> np.ndarray:
    return frame[:height].astype(np.float32)


def inner_lip_ratio(points: np.ndarray) -> float:
    """Mean inner-lip opening (61-67, 62-66, 63-65) over the inner mouth width (60-64)."""
    opening = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(opening / np.linalg.norm(points[60] - points[64]))


def redetect(detector: LandmarkDetector, frame: np.ndarray) -> np.ndarray:
    return single_face(detector.detect(yuv420_to_rgb(frame)), what="a rendered frame").points


def test_default_avatar_has_68_landmarks_in_place(avatar):
    h, w = avatar.rgb.shape[:2]
    assert (h, w) == (512, 512) and avatar.rgb.dtype == np.uint8
    marks = avatar.landmarks
    assert marks.shape == (68, 2)
    assert (marks[:, 0] >= 0).all() and (marks[:, 0] < w).all()
    assert (marks[:, 1] >= 0).all() and (marks[:, 1] < h).all()
    nose_bottom = marks[31:36, 1].max()
    assert (marks[48:68, 1] > nose_bottom).all(), "the mouth must lie below the nose"
    eyes = marks[36:48, 1].max()
    assert eyes < nose_bottom < marks[8, 1], "eyes, nose and chin in order from the top"
    x0, y0, x1, y1 = avatar.face_box
    assert 0 <= x0 < marks[:, 0].min() and marks[:, 0].max() < x1 <= w
    assert 0 <= y0 < marks[:, 1].min() and marks[:, 1].max() < y1 <= h


def test_idle_frame_is_the_photo(renderer, avatar):
    frame = renderer.idle_frame(0)
    assert frame.shape == (512 * 3 // 2, 512) and frame.dtype == np.uint8
    assert renderer.idle_frame(123) is frame, "idle frames are cached"
    back = yuv420_to_rgb(frame).astype(np.float32)
    error = np.abs(back - avatar.rgb.astype(np.float32)).mean()
    assert error < 4.0, f"idle frame differs from the photo by {error:.2f} per channel on average"


def test_rest_shape_renders_the_idle_frame(renderer):
    rest = renderer.render_mouth(shape())[0]
    idle = renderer.idle_frame(0)
    diff = np.abs(rest.astype(np.int16) - idle.astype(np.int16))
    # Only the photo's own teeth/lip edge row may move by a fraction of a pixel.
    assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 12


def test_open_mouth_moves_only_the_mouth_and_jaw(renderer, avatar):
    h = renderer.height
    idle = renderer.idle_frame(0)
    opened = renderer.render_mouth(shape(open=1.0))[0]
    marks = avatar.landmarks
    # Around the mouth and chin: a strong change.
    x0, x1 = int(marks[48, 0]), int(marks[54, 0])
    y0, y1 = int(marks[51, 1]), int(marks[8, 1])
    change = np.abs(luma(opened, h) - luma(idle, h))[y0:y1, x0:x1].mean()
    assert change > 15.0, f"open=1 changed the mouth region by only {change:.1f} luma levels"
    # Eyes, forehead and the whole frame above the nose, and the image corners: untouched.
    above_nose = int(marks[30, 1])
    assert np.array_equal(opened[:above_nose], idle[:above_nose])
    for ys, xs in ((slice(0, 40), slice(0, 40)), (slice(0, 40), slice(-40, None)),
                   (slice(h - 40, h), slice(0, 40)), (slice(h - 40, h), slice(-40, None))):
        assert np.array_equal(opened[:h][ys, xs], idle[:h][ys, xs])
    c = renderer.crop
    outside = np.ones((h, renderer.width), dtype=bool)
    outside[c.y0 : c.y0 + c.height, c.x0 : c.x0 + c.width] = False
    assert np.array_equal(opened[:h][outside], idle[:h][outside]), "nothing outside the mouth crop may change"


def test_open_mouth_is_dark_inside(renderer, avatar):
    h = renderer.height
    marks = avatar.landmarks
    cx = int(round(0.5 * (marks[60, 0] + marks[64, 0])))
    top, bottom = int(marks[62, 1]), int(marks[8, 1])
    photo_column = luma(renderer.idle_frame(0), h)[top:bottom, cx - 2 : cx + 3].mean(axis=1)
    open_column = luma(renderer.render_mouth(shape(open=1.0))[0], h)[top:bottom, cx - 2 : cx + 3].mean(axis=1)
    assert photo_column.min() > 100, "the photo's mouth is closed/smiling, so darkness must come from the renderer"
    dark_rows = int((open_column < 70).sum())
    assert dark_rows >= 5, f"only {dark_rows} dark rows in the centre of the open mouth"
    # Teeth stay visible under the upper lip.
    assert open_column[: dark_rows + 8].max() > 180


def test_redetected_lips_close_on_press_and_open_on_open(renderer, detector):
    ratios = {}
    for name, row in {
        "press": shape(press=1.0),
        "rest": shape(),
        "half": shape(open=0.5),
        "open": shape(open=1.0),
        "press_wins": shape(open=0.8, press=1.0),
    }.items():
        ratios[name] = inner_lip_ratio(redetect(detector, renderer.render_mouth(row)[0]))
    assert ratios["press"] < 0.07, ratios
    assert ratios["press_wins"] < 0.07, ratios
    assert ratios["open"] > 0.3, ratios
    assert ratios["press"] < ratios["rest"] < ratios["half"] < ratios["open"], ratios


def test_bite_shows_upper_teeth_above_the_lower_lip(renderer, avatar):
    h = renderer.height
    marks = avatar.landmarks
    cx = int(round(0.5 * (marks[60, 0] + marks[64, 0])))
    top, bottom = int(marks[51, 1]), int(marks[57, 1]) + 2
    column = luma(renderer.render_mouth(shape(bite=1.0))[0], h)[top:bottom, cx - 1 : cx + 2].mean(axis=1)
    teeth = np.flatnonzero(column > 200)
    assert len(teeth) >= 2, f"no teeth in the bite column {column.round()}"
    # Right below the teeth comes lip, not a dark gap.
    assert column[teeth.max() + 1 :].min() > 110, column.round()


def test_batch_equals_single_frames(renderer):
    rng = np.random.default_rng(3)
    params = rng.random((5, N_MOUTH_PARAMS)).astype(np.float32)
    params[:, PRESS] *= 0.3
    params[:, BITE] *= 0.3
    batch = renderer.render_mouth(params)
    for row, frame in zip(params, batch):
        single = renderer.render_mouth(row[None])[0]
        assert np.abs(single.astype(np.int16) - frame.astype(np.int16)).max() <= 1


def speech_chunk(seconds: float, with_phonemes: bool) -> SpeechChunk:
    rate = 22050
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    audio = (6000 * envelope * np.sin(2 * np.pi * 220.0 * t)).astype(np.int16)
    phonemes = None
    if with_phonemes:
        # "mama": closed, open, closed, open, then rest.
        spans = [("m", 0.05, 0.2), ("a", 0.2, 0.5), ("m", 0.5, 0.65), ("a", 0.65, 1.0)]
        phonemes = tuple(PhonemeTiming(p, s, e) for p, s, e in spans)
    return SpeechChunk(text="mama", audio=audio, sample_rate=rate, phonemes=phonemes)


def test_frame_source_from_phonemes(renderer):
    pytest.importorskip("models.lipsync.visemes", reason="models/lipsync/visemes.py (mouth tracks) is not there yet")
    chunk = speech_chunk(1.2, with_phonemes=True)
    source = renderer.begin(chunk, tick=0)
    assert source.n_frames == math.ceil(chunk.duration * FPS) == 30
    frames = source.render(0, 12) + source.render(12, source.n_frames - 12)
    assert len(frames) == source.n_frames
    assert all(f.shape == (768, 512) and f.dtype == np.uint8 for f in frames)
    h = renderer.height
    idle = luma(renderer.idle_frame(0), h)
    changes = [np.abs(luma(f, h) - idle).mean() for f in frames]
    assert max(changes) > 3 * (min(changes) + 0.05), "the mouth must move over 'mama'"
    with pytest.raises(IndexError):
        source.render(source.n_frames - 1, 2)


def test_frame_source_from_audio_only(renderer):
    pytest.importorskip("models.lipsync.visemes", reason="models/lipsync/visemes.py (mouth tracks) is not there yet")
    chunk = speech_chunk(0.8, with_phonemes=False)
    source = renderer.begin(chunk, tick=5)
    assert source.n_frames == 20
    frames = source.render(0, source.n_frames)
    h = renderer.height
    idle = luma(renderer.idle_frame(0), h)
    assert max(np.abs(luma(f, h) - idle).mean() for f in frames) > 0.2, "loud audio must open the mouth"


def test_yuv_round_trip_is_close(avatar):
    back = yuv420_to_rgb(rgb_to_yuv420(avatar.rgb)).astype(np.float32)
    assert np.abs(back - avatar.rgb).mean() < 4.0


def test_one_yuv_conversion_for_every_renderer():
    import torch

    from models.lipsync import wav2lip_renderer
    from models.lipsync.yuv import rgb_to_yuv_planes

    assert wav2lip_renderer.rgb_to_yuv420p_planes is rgb_to_yuv_planes
    # BT.601 limited range: black and white exactly, any colour within a code of the exact matrix.
    rgb = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [40, 90, 200]], dtype=torch.uint8)
    image = rgb.view(5, 3, 1, 1).expand(5, 3, 2, 2).contiguous()
    y, u, v = (p[:, 0, 0].numpy().astype(float) for p in rgb_to_yuv_planes(image))
    assert y[:2].tolist() == [16, 235] and u[:2].tolist() == [128, 128] and v[:2].tolist() == [128, 128]
    matrix = np.array([[0.256788, 0.504129, 0.097906], [-0.148223, -0.290993, 0.439216],
                       [0.439216, -0.367788, -0.071427]])
    exact = rgb.numpy().astype(float) @ matrix.T + [16.0, 128.0, 128.0]
    assert np.abs(np.stack([y, u, v], axis=1) - exact).max() <= 1.0
    # Float input (a renderer's output) is rounded first: the same bytes as its uint8 rounding.
    x = torch.rand(2, 3, 8, 6) * 270.0 - 8.0
    rounded = x.clamp(0, 255).add(0.5).floor().to(torch.uint8)
    assert all(torch.equal(a, b) for a, b in zip(rgb_to_yuv_planes(x), rgb_to_yuv_planes(rounded)))


@pytest.mark.parametrize("image", ["black", "gradient"])
def test_no_face_is_a_clear_error(detector, image):
    if image == "black":
        rgb = np.zeros((240, 320, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 255, 320, dtype=np.float32)
        rgb = np.repeat(np.repeat(ramp[None, :, None], 240, axis=0), 3, axis=2).astype(np.uint8)
    with pytest.raises(NoFaceError, match="no face found"):
        PhotoAvatar.from_image(rgb, "blank", detector)


def test_face_too_small_and_several_faces_are_clear_errors(detector, avatar):
    with pytest.raises(FaceTooSmallError, match="crop closer"):
        PhotoAvatar.from_image(avatar.rgb, "astronaut", detector, min_face=400)
    x0, y0, x1, y1 = avatar.face_box
    face = avatar.rgb[max(0, y0 - 20) : y1 + 20, max(0, x0 - 20) : x1 + 20]
    pair = np.concatenate([face, face], axis=1)
    with pytest.raises(MultipleFacesError, match="2 faces"):
        PhotoAvatar.from_image(pair, "twins", detector)


def test_odd_sized_photo_is_cropped_to_even(detector, avatar):
    odd = avatar.rgb[:511, :509]
    made = PhotoAvatar.from_image(odd, "odd", detector)
    assert made.rgb.shape == (510, 508, 3)
    renderer = PhotoWarpRenderer(made, device="cpu", life=None)
    frame = renderer.render_mouth(shape(open=1.0))[0]
    assert frame.shape == (510 * 3 // 2, 508)


def test_redetected_opening_follows_the_mouth_track(renderer, detector):
    pytest.importorskip("models.lipsync.visemes", reason="models/lipsync/visemes.py (mouth tracks) is not there yet")
    # "papa bought a map, hello there" in Piper-style IPA code points with speech-like timings.
    symbols = "p a p ə b ɔ t ə m æ p h ə l o ʊ ð ɛ ɹ".split()
    durations = [0.08, 0.14, 0.08, 0.1, 0.07, 0.16, 0.06, 0.07, 0.08, 0.18, 0.09,
                 0.06, 0.07, 0.08, 0.14, 0.1, 0.06, 0.15, 0.12]
    t, phonemes = 0.1, []
    for symbol, d in zip(symbols, durations):
        phonemes.append(PhonemeTiming(symbol, t, t + d))
        t += d
    rate = 22050
    audio = np.zeros(int((t + 0.2) * rate), dtype=np.int16)
    source = renderer.begin(SpeechChunk("papa bought a map, hello there", audio, rate, tuple(phonemes)), tick=0)
    frames = source.render(0, source.n_frames)
    track = source.track
    ratios = np.array([inner_lip_ratio(redetect(detector, f)) for f in frames])
    closed = track[:, PRESS] > 0.99
    assert closed.sum() >= 3, "p/b/m must give closure frames"
    assert ratios[closed].max() < 0.08, f"lips not closed on p/b/m frames: {ratios[closed].round(3)}"
    speaking = np.corrcoef(ratios, track[:, OPEN])[0, 1]
    assert speaking > 0.7, f"re-detected opening follows `open` with r={speaking:.2f} only"


def test_load_avatar_caches_landmarks_and_names_missing_avatars(tmp_path, avatar):
    from models.avatar.photo import load_avatar

    first = load_avatar("astronaut", None, tmp_path)
    assert (tmp_path / "astronaut.landmarks.npz").is_file()
    again = load_avatar("astronaut", None, tmp_path)
    assert np.array_equal(first.landmarks, avatar.landmarks) and np.array_equal(again.landmarks, avatar.landmarks)
    with pytest.raises(FileNotFoundError, match="avatar 'nobody' not found"):
        load_avatar("nobody", tmp_path)
