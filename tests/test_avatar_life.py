"""Avatars that look alive: blinks, sway and nods of the astronaut photo, and a looping video avatar.

Real components throughout: dlib re-detects eyes, the video avatar is encoded with PyAV and
prepared with models/avatar/prepare.py, the speech chunks go through the real mouth track.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.registration import phase_cross_correlation

from models.avatar.landmarks import LandmarkDetector, single_face
from models.avatar.photo import PhotoAvatar
from models.avatar.prepare import prepare_video
from models.avatar.store import AvatarStore
from models.lipsync.life import (
    HEAD_ROLL,
    HEAD_X,
    HEAD_Y,
    BlinkSchedule,
    BodyFields,
    HeadMotion,
    LifeSettings,
    nod_track,
    stressed_vowel_times,
)
from models.lipsync.mouth import N_MOUTH_PARAMS
from models.lipsync.photo_warp import PhotoWarpRenderer
from models.lipsync.video_warp import VideoWarpRenderer, ping_pong
from models.lipsync.yuv import yuv420_planes, yuv420_to_rgb
from models.speech import PhonemeTiming, SpeechChunk

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 25


@pytest.fixture(scope="module")
def renderer(avatar) -> PhotoWarpRenderer:
    return PhotoWarpRenderer(avatar, fps=FPS, device="cpu")


def luma(frame: np.ndarray) -> np.ndarray:
    return yuv420_planes(frame)[0].astype(np.float64)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean over both eyes of the lid-to-lid heights over the corner-to-corner width."""
    def one(e: np.ndarray) -> float:
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2.0 * np.linalg.norm(e[0] - e[3]))

    return 0.5 * (one(points[36:42]) + one(points[42:48]))


def redetect(detector: LandmarkDetector, frame: np.ndarray) -> np.ndarray:
    return single_face(detector.detect(yuv420_to_rgb(frame)), what="a rendered frame").points


def face_shift(reference: np.ndarray, frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(dy, dx) in pixels by which the picture inside box moved from reference to frame (sub-pixel)."""
    x0, y0, x1, y1 = box
    a, b = reference[y0:y1, x0:x1], frame[y0:y1, x0:x1]
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    shift, _, _ = phase_cross_correlation(a * window, b * window, upsample_factor=20, normalization=None)
    return -shift


def eye_box(avatar: PhotoAvatar, pad: int = 4) -> tuple[slice, slice]:
    eyes = avatar.landmarks[36:48]
    (x0, y0), (x1, y1) = eyes.min(axis=0), eyes.max(axis=0)
    return slice(int(y0) - pad, int(y1) + pad), slice(int(x0) - pad, int(x1) + pad)


# ---------------------------------------------------------------- blinks


def test_blink_schedule_gaps_durations_and_determinism():
    schedule = BlinkSchedule(FPS, LifeSettings(seed=3))
    starts = schedule.starts(0, 120 * FPS)
    gaps = np.diff(starts) / FPS
    assert len(starts) >= 20
    assert gaps.min() >= 2.0 - 1 / FPS and gaps.max() <= 6.0 + 1 / FPS, gaps
    assert gaps.std() > 0.3, "blink gaps should vary"
    closures = np.array([schedule.closure(t) for t in range(120 * FPS)])
    shut = closures > 0.0
    # Each blink: one run of frames, 150-250 ms long, fully shut once.
    runs = np.flatnonzero(np.diff(shut.astype(int)) == 1) + 1
    assert list(runs) == [s for s in starts if s > 0]
    for s in starts:
        run = closures[s : s + 10]
        length = int(np.argmax(run == 0.0))
        assert 0.15 <= length / FPS <= 0.25, run
        assert run.max() == 1.0
    assert shut.mean() < 0.1, "the eyes are open most of the time"
    again = BlinkSchedule(FPS, LifeSettings(seed=3))
    assert [again.closure(t) for t in range(999, -1, -7)] == [schedule.closure(t) for t in range(999, -1, -7)]
    assert BlinkSchedule(FPS, LifeSettings(seed=4)).starts(0, 120 * FPS) != starts


def test_blinks_close_the_eyes_at_the_scheduled_ticks_and_only_then(renderer, avatar, detector):
    life = renderer.life
    schedule = life.blinks
    rows, cols = eye_box(avatar)
    ticks = range(0, 12 * FPS)
    closures = np.array([schedule.closure(t) for t in ticks])
    # Each idle frame against the same tick's pose without a blink.
    change = np.array([
        np.abs(luma(renderer.idle_frame(t))[rows, cols] - luma(life.warped_photo(life.poses([t])[0]))[rows, cols]).mean()
        for t in ticks
    ])
    assert (closures > 0).sum() >= 10
    assert (change[closures == 0.0] == 0.0).all(), "open eyes are the photo's own"
    assert change[closures >= 0.5].min() > 3.0, change[closures >= 0.5]
    assert change[closures == 1.0].min() > change[(closures > 0) & (closures < 0.5)].max()

    open_ratio = eye_aspect_ratio(avatar.landmarks)
    peaks = [s + 1 for s in schedule.starts(0, 12 * FPS)][:2]
    assert all(schedule.closure(t) == 1.0 for t in peaks)
    for t in peaks:
        shut = eye_aspect_ratio(redetect(detector, renderer.idle_frame(t)))
        assert shut < 0.6 * open_ratio, f"tick {t}: eye aspect ratio {shut:.3f}, open {open_ratio:.3f}"
    for t in (peaks[0] - 3, peaks[0] + 6):
        assert schedule.closure(t) == 0.0
        opened = eye_aspect_ratio(redetect(detector, renderer.idle_frame(t)))
        assert opened > 0.85 * open_ratio, f"tick {t}: eyes should be open ({opened:.3f} vs {open_ratio:.3f})"


# ---------------------------------------------------------------- sway


def test_idle_sway_is_small_smooth_and_present(renderer, avatar):
    photo = luma(renderer.render_mouth(np.zeros((1, N_MOUTH_PARAMS)))[0])
    box = avatar.face_box
    ticks = list(range(0, 20 * FPS, 4))
    shifts = np.array([face_shift(photo, luma(renderer.idle_frame(t)), box) for t in ticks])
    size = np.linalg.norm(shifts, axis=1)
    assert size.max() <= 3.0, f"the face moved {size.max():.2f} px"
    assert size.max() >= 0.75, "the face should sway visibly over 20 s"
    assert np.ptp(shifts[:, 0]) >= 0.5 and np.ptp(shifts[:, 1]) >= 0.5, "both ways"
    # Slow: 4 ticks (160 ms) apart, the face moves by under a pixel; from tick to tick no part
    # of the pose moves by more than one step (a quarter pixel).
    assert np.linalg.norm(np.diff(shifts, axis=0), axis=1).max() <= 0.8
    steps = np.abs(np.diff(renderer.life.poses(range(60 * FPS)), axis=0))
    assert steps.max() == 1
    assert (steps[:, [HEAD_X, HEAD_Y, HEAD_ROLL]].sum(axis=1) <= 1).all(), "the face moves one step at a time"
    assert (steps.sum(axis=1) > 0).mean() < 0.4, "most ticks reuse the warped photo"
    # The background far from the person never moves.
    h, w = renderer.height, renderer.width
    idle = renderer.idle_frame(57)
    region = renderer.life.fields.region
    for rows, cols in ((slice(0, 40), slice(0, region.x0)), (slice(0, 40), slice(region.x1, w))):
        assert np.array_equal(luma(idle)[rows, cols], photo[rows, cols])
    assert region.x0 > 0 and region.x1 < w and region.y1 <= h


def test_motion_fields_are_smooth_everywhere(renderer, avatar):
    """No seams: even at the largest pose (every motion at its peak, plus a nod) neighbouring pixels
    move apart by under a third of a pixel (a seam would tear them a whole displacement apart), and
    nothing moves outside the warped region."""
    from models.lipsync.yuv import CropBox

    life = renderer.life
    fields = BodyFields(avatar.landmarks, avatar.width, avatar.height)
    basis = fields.basis(CropBox(0, 0, avatar.width, avatar.height))
    peak = life.motion.peak.copy()
    peak[HEAD_Y] += life.nod_depth
    stretch = sum(p * np.maximum(np.abs(np.diff(b, axis=1))[:, :, :-1], np.abs(np.diff(b, axis=2))[:, :-1, :]).max(0)
                  for p, b in zip(peak, basis))
    assert stretch.max() < 0.3, f"neighbours move up to {stretch.max():.2f} px apart"
    from skimage.draw import polygon

    outline = avatar.landmarks[list(range(17)) + list(range(26, 16, -1))]
    rows, cols = polygon(outline[:, 1], outline[:, 0])
    assert stretch[rows, cols].max() < 0.05, "the face itself (jaw line to brows) moves nearly rigidly"
    r = fields.region
    outside = np.ones(basis.shape[2:], dtype=bool)
    outside[r.y0 : r.y1, r.x0 : r.x1] = False
    assert np.abs(basis[:, :, outside]).max() < 1e-3


def test_idle_frames_are_a_pure_function_of_the_tick(avatar, renderer):
    ticks = [0, 7, 8, 300, 131, 132, 5000, 8, 0]
    first = [renderer.idle_frame(t).copy() for t in ticks]
    fresh = PhotoWarpRenderer(avatar, fps=FPS, device="cpu")
    for t, frame in zip(reversed(ticks), reversed(first)):
        assert np.array_equal(fresh.idle_frame(t), frame), f"tick {t}"
    other = PhotoWarpRenderer(avatar, fps=FPS, device="cpu", life=LifeSettings(seed=9))
    assert not all(np.array_equal(other.idle_frame(t), f) for t, f in zip(ticks, first))


def test_mouth_region_is_still_between_sway_steps(renderer, avatar):
    """The check tests/test_media_session.py makes on the wire, here on the frames themselves."""
    lips = avatar.landmarks[48:68]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    px, py = 0.15 * (x1 - x0), 0.4 * (y1 - y0)
    rows, cols = slice(int(y0 - py), int(y1 + 2 * py)), slice(int(x0 - px), int(x1 + px))

    def coarse(frame: np.ndarray) -> np.ndarray:
        box = luma(frame)[rows, cols]
        h, w = (box.shape[0] // 8) * 8, (box.shape[1] // 8) * 8
        return box[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))

    blocks = [coarse(renderer.idle_frame(t)) for t in range(400, 400 + 10 * FPS)]
    motion = np.array([np.abs(b - a).mean() for a, b in zip(blocks, blocks[1:])])
    assert motion.mean() < 0.25 and motion.max() < 1.0, (motion.mean(), motion.max())


# ---------------------------------------------------------------- speech: nods and joins


def stressed_chunk(seconds: float = 2.0) -> SpeechChunk:
    # "hello, my ˈname is ˈbob": Piper-style code points, stress marks as their own phonemes.
    symbols = list("həlˈoʊ maɪ ˈneɪm ɪz ˈbɑb")
    t, phonemes = 0.1, []
    for symbol in symbols:
        d = 0.0 if symbol == "ˈ" else 0.08
        phonemes.append(PhonemeTiming(symbol, t, t + d))
        t += d
    rate = 22050
    audio = np.zeros(int(seconds * rate), dtype=np.int16)
    return SpeechChunk("hello, my name is bob", audio, rate, tuple(phonemes))


def test_nods_follow_primary_stress_marks():
    chunk = stressed_chunk()
    vowels = stressed_vowel_times(chunk.phonemes)
    assert len(vowels) == 3
    assert all(any(abs(p.start - v) < 1e-9 and p.phoneme in "oɑe" for p in chunk.phonemes) for v in vowels)
    n = int(chunk.duration * FPS)
    track = nod_track(chunk.phonemes, n, FPS, depth=1.5, duration=0.22)
    assert track[0] == 0.0 and track[-1] == 0.0
    assert 1.0 <= track.max() <= 1.5
    times = (np.arange(n) + 0.5) / FPS
    for v in vowels:
        near = np.abs(times - v) < 0.15
        assert track[near].max() > 0.9, f"no dip near the stressed vowel at {v:.2f} s"
    dipping = track > 0.05
    assert dipping.sum() / FPS <= 3 * 0.22 and not dipping[times < 0.25].any()
    # A chunk ending mid-nod keeps the nod inside it, so the next frame starts level.
    cut = nod_track(chunk.phonemes, int((vowels[-1] + 0.05) * FPS), FPS, depth=1.5, duration=0.22)
    assert cut[-1] < 0.05 and cut.max() > 1.0


def test_speech_frames_nod_and_join_the_idle_frames(renderer, avatar):
    chunk = stressed_chunk()
    start = 203
    source = renderer.begin(chunk, start)
    frames = source.render(0, source.n_frames)
    assert source.nods is not None and source.nods.max() > 1.0
    # The speech ends at rest: its first and last frames are the idle frames of those ticks.
    for i in (0, source.n_frames - 1):
        assert source.track[i].max() == 0.0 and source.nods[i] == 0.0
        diff = np.abs(frames[i].astype(np.int16) - renderer.idle_frame(start + i))
        assert diff.mean() < 0.05, f"frame {i} differs from the idle frame of its tick"
    # At the deepest nod the head (eyes and brows, away from the mouth) sits lower than idle.
    x0, y0, x1, y1 = avatar.face_box
    eyes_box = (x0, y0, x1, int(avatar.landmarks[29, 1]))
    i = int(np.argmax(source.nods))
    dy, dx = face_shift(luma(renderer.idle_frame(start + i)), luma(frames[i]), eyes_box)
    assert 0.6 * source.nods[i] <= dy <= 1.4 * source.nods[i] + 0.25 and abs(dx) < 0.4, (dy, dx, source.nods[i])


@pytest.mark.parametrize("crop", [(slice(0, 511), slice(0, 509)), (slice(36, 206), slice(160, 300))],
                         ids=["odd-size", "face-fills-the-frame"])
def test_life_works_on_any_framing(avatar, crop):
    rows, cols = crop
    rgb = avatar.rgb[rows, cols]
    rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
    moved = PhotoAvatar("cut", rgb, (avatar.landmarks - [cols.start, rows.start]).astype(np.float32))
    renderer = PhotoWarpRenderer(moved, fps=FPS, device="cpu")
    h, w = rgb.shape[:2]
    assert all(renderer.idle_frame(t).shape == (h * 3 // 2, w) for t in range(0, 300, 7))
    source = renderer.begin(stressed_chunk(), 11)
    frames = source.render(0, source.n_frames)
    assert all(f.shape == (h * 3 // 2, w) for f in frames)
    # Still the same picture, gently moved: no rows smeared in from the borders, the face where it was.
    photo = luma(renderer.render_mouth(np.zeros((1, N_MOUTH_PARAMS)))[0])
    x0, y0, x1, y1 = moved.face_box
    for t in range(0, 300, 23):
        frame = luma(renderer.idle_frame(t))
        assert abs(frame.mean() - photo.mean()) < 2.0 and abs(frame.std() / photo.std() - 1.0) < 0.03
        assert np.linalg.norm(face_shift(photo, frame, (x0, y0, x1, y1))) <= 3.0


def test_life_settings_refuse_overlapping_blinks():
    with pytest.raises(ValueError, match="blink_jitter"):
        LifeSettings(blink_interval=2.0, blink_jitter=1.9)
    motion = HeadMotion(FPS, LifeSettings(), 1.0, 100.0)
    pose = motion.pose(np.arange(0, 60 * FPS))
    assert (np.abs(pose) <= motion.peak + 1e-9).all()


# ---------------------------------------------------------------- video avatars

N_VIDEO = 24
DRIFT = 0.4  # px per frame, to the right


def drifted(rgb: np.ndarray, k: int) -> np.ndarray:
    coeffs = (1.0, 0.0, -DRIFT * k, 0.0, 1.0, 0.0)  # output (x, y) shows input (x - drift k, y)
    image = Image.fromarray(rgb).transform(rgb.shape[1::-1], Image.Transform.AFFINE, coeffs,
                                           Image.Resampling.BILINEAR)
    return np.asarray(image)


def encode(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "14", "preset": "ultrafast"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_store(tmp_path_factory, detector) -> AvatarStore:
    """A prepared video avatar 'drift': the astronaut's face drifting right 0.4 px per frame, 24 frames."""
    face = np.ascontiguousarray(data.astronaut()[0:320, 96:416])
    folder = tmp_path_factory.mktemp("video-avatar")
    clip = encode(folder / "drift.mp4", [drifted(face, k) for k in range(N_VIDEO)])
    store = AvatarStore(folder / "avatars")
    prepare_video(clip, "drift", store, detector=detector)
    return store


@pytest.fixture(scope="module")
def video(video_store) -> VideoWarpRenderer:
    return VideoWarpRenderer(video_store.load("drift"), fps=FPS, device="cpu")


def test_ping_pong_order():
    assert [ping_pong(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [ping_pong(i, 1) for i in range(3)] == [0, 0, 0]


def test_video_idle_loops_without_a_jump(video):
    assert video.n_source == N_VIDEO and video.loop_ticks == 2 * (N_VIDEO - 1)
    period = int(video.loop_ticks)
    for t in range(0, period + 3):
        assert np.array_equal(video.idle_frame(t), video.idle_frame(t + period))
        assert np.array_equal(video.idle_frame(t), video.idle_frame(t + 5 * period))
    def blocks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Mean absolute change per 16x16 block: a jump anywhere in the picture shows in some block."""
        d = np.abs(b - a)
        h, w = d.shape[0] // 16 * 16, d.shape[1] // 16 * 16
        return d[:h, :w].reshape(h // 16, 16, w // 16, 16).mean(axis=(1, 3))

    frames = [luma(video.idle_frame(t)) for t in range(2 * period + 1)]
    steps = [blocks(a, b) for a, b in zip(frames, frames[1:])]
    # Playing the clip in a plain loop would jump from its last frame back to its first.
    jump = blocks(luma(video.idle_frame(N_VIDEO - 1)), luma(video.idle_frame(0)))
    assert max(s.mean() for s in steps) < 0.25 * jump.mean()
    assert max(s.max() for s in steps) < 0.5 * jump.max(), "no block of the picture jumps"
    assert min(s.mean() for s in steps) > 0.0, "every tick shows the next footage frame"


def test_video_at_another_frame_rate_follows_its_own_clock(video_store):
    prepared = video_store.load("drift")
    slow = VideoWarpRenderer(dataclasses.replace(prepared, fps=12.5), fps=FPS, device="cpu")
    assert slow.loop_ticks == 4 * (N_VIDEO - 1)
    assert [slow.frame_index(t) for t in range(6)] == [0, 0, 1, 1, 2, 2]


def test_video_rest_is_the_footage_and_open_opens_the_mouth_where_the_face_is(video, video_store, detector):
    prepared = video_store.load("drift")
    rest = video.render_frames(np.zeros((3, N_MOUTH_PARAMS)), [0, 11, 30])
    for frame, t in zip(rest, (0, 11, 30)):
        diff = np.abs(frame.astype(np.int16) - video.idle_frame(t))
        assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 12
    opened = np.zeros((1, N_MOUTH_PARAMS), dtype=np.float32)
    opened[0, 0] = 1.0
    centres = []
    for t in (0, 12, 23):
        k = video.frame_index(t)
        frame = video.render_frames(opened, [t])[0]
        points = redetect(detector, frame)
        ratio = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
        ratio /= np.linalg.norm(points[60] - points[64])
        assert ratio > 0.25, f"tick {t}: inner lips {ratio:.2f} apart"
        # The dark opening sits on this frame's own mouth.
        dark = (luma(frame) < 60) & (luma(video.idle_frame(t)) >= 60)
        ys, xs = np.nonzero(dark)
        assert len(xs) > 30
        mouth = prepared.landmarks[k, 60:68].mean(axis=0)
        # (the jaw drops, so the opening hangs a little below the closed lips' centre)
        assert abs(np.median(xs) - mouth[0]) < 2.0 and -2.0 < np.median(ys) - mouth[1] < 8.0
        centres.append(np.median(xs))
    assert centres[2] - centres[0] == pytest.approx(DRIFT * 23, abs=2.0), "the mouth follows the drifting face"
    # Nothing far from the mouth changes.
    frame = video.render_frames(opened, [5])[0]
    box = video.boxes[video.frame_index(5)]
    outside = np.ones((video.height, video.width), dtype=bool)
    outside[box.y0 : box.y1, box.x0 : box.x1] = False
    assert np.array_equal(luma(frame)[outside], luma(video.idle_frame(5))[outside])


def test_video_speech_chunk_plays_on_the_footage_of_its_ticks(video):
    chunk = stressed_chunk(2.0)
    source = video.begin(chunk, 40)
    frames = source.render(0, source.n_frames)
    assert len(frames) == source.n_frames == 50
    assert source.track[-1].max() == 0.0
    last = source.n_frames - 1
    assert np.abs(frames[last].astype(np.int16) - video.idle_frame(40 + last)).mean() < 0.05
    moved = [np.abs(f.astype(np.int16) - video.idle_frame(40 + i)).mean() for i, f in enumerate(frames)]
    assert max(moved) > 0.3, "the mouth must move while speaking"


def test_build_renderer_picks_the_video_renderer_for_video_avatars(video_store):
    from models.bundle import build_renderer
    from rtc_server.config import Config

    config = Config(avatar="drift", avatar_dir=video_store.root)
    renderer = build_renderer(config, "cpu")
    assert isinstance(renderer, VideoWarpRenderer) and renderer.n_source == N_VIDEO
    assert renderer.avatar.landmarks.shape == (68, 2)
