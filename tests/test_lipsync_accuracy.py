"""Lip-sync accuracy on re-detected frames: the measurement itself, and the default renderer measured with it.

The bench (bench/bench_lipsync.py) runs the same measurement on more sentences with the
stricter targets (closure >= 95 %, r >= 0.8); two short sentences give noisier figures, so
the bounds here are looser.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.avatar.landmarks import LandmarkDetector
from models.avatar.photo import PhotoAvatar, load_default_avatar
from models.lipsync.accuracy import (
    CLOSED_MAX,
    LipSyncAccuracy,
    OpeningMeter,
    closed_threshold,
    closure_checks,
    closure_frames,
    expected_openness,
    inner_lip_opening,
    openness_segments,
    speech_mask,
    summarise,
)
from models.lipsync.photo_warp import PhotoWarpRenderer
from models.lipsync.renderer import FrameSource, LipSyncRenderer
from models.lipsync.visemes import openness
from models.speech import PhonemeTiming, SpeechChunk

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 25
SENTENCES = ("Papa made Mom a pumpkin pie.", "Bob bought a big map.")


def timings(*spans: tuple[str, float]) -> tuple[PhonemeTiming, ...]:
    """Consecutive phonemes from (symbol, duration) pairs, starting at 0."""
    out, t = [], 0.0
    for symbol, duration in spans:
        out.append(PhonemeTiming(symbol, t, t + duration))
        t += duration
    return tuple(out)


# -- the measurement on synthetic input ----------------------------------------------------


def test_inner_lip_opening_is_gap_over_width():
    points = np.zeros((68, 2))
    points[60], points[64] = (100, 50), (140, 50)  # 40 px wide
    for top, bottom, gap in ((61, 67, 2.0), (62, 66, 4.0), (63, 65, 6.0)):
        points[top] = (110, 48)
        points[bottom] = (110, 48 + gap)
    assert inner_lip_opening(points) == pytest.approx(4.0 / 40.0)
    assert math.isnan(inner_lip_opening(np.full((68, 2), np.nan)))


def test_closed_threshold_comes_from_the_photo_rest_opening():
    assert closed_threshold(0.17) == CLOSED_MAX  # smiling photo: its rest gap is far above closed
    assert closed_threshold(0.10) == pytest.approx(0.05)  # slightly parted lips: close to half of them
    assert closed_threshold(0.02) == CLOSED_MAX  # closed-lip photo: already closed at rest


def test_marks_hand_their_time_to_the_phones():
    phonemes = timings(("^", 0.05), ("m", 0.04), ("ˈ", 0.04), ("ɑ", 0.06), ("ː", 0.06), (" ", 0.04),
                       ("t", 0.05), (".", 0.1), ("$", 0.02))
    segs = openness_segments(phonemes)
    values = [v for _, _, v in segs]
    assert values == [0.0, 0.0, pytest.approx(openness("ɑ")), pytest.approx(openness("t")), 0.0, 0.0]
    # The stress mark's time goes to the vowel after it, the length mark's too (before it),
    # the short word gap is split between the vowel and the t.
    assert segs[2][:2] == pytest.approx((0.09, 0.27))
    assert segs[3][:2] == pytest.approx((0.27, 0.34))


def test_expected_openness_follows_the_phonemes_with_the_lead():
    phonemes = timings(("^", 0.1), ("m", 0.08), ("ɑ", 0.2), ("m", 0.08), (".", 0.2))
    n = 27
    raw = expected_openness(phonemes, n, FPS, lead=0.04, smooth=False)
    times = (np.arange(n) + 0.5) / FPS + 0.04  # the instant each frame's window is centred on
    vowel = (times > 0.2) & (times < 0.36)
    closure = (times > 0.1) & (times < 0.16)
    assert raw[vowel] == pytest.approx(openness("ɑ"))
    assert raw[closure].max() == 0.0
    assert raw[times > 0.5].max() == 0.0
    unclosed = expected_openness(phonemes, n, FPS, lead=0.04, smooth=False, closures=False)
    blurred = expected_openness(phonemes, n, FPS, lead=0.04, closures=False)
    assert np.abs(blurred - unclosed).max() < 0.5 and blurred.sum() == pytest.approx(unclosed.sum(), rel=0.05)
    smooth = expected_openness(phonemes, n, FPS, lead=0.04)
    assert blurred[closure].max() > 0.0 and smooth[closure].max() == 0.0, "smoothing must not open a closure"
    mask = speech_mask(phonemes, n, FPS, lead=0.04)
    assert mask[closure].all() and not mask[times < 0.09].any() and not mask[times > 0.47].any()


def test_closure_frames_take_the_span_and_one_frame_earlier():
    # Frame instants at 25 fps: 0.02, 0.06, 0.10, 0.14, ...
    assert closure_frames(0.09, 0.15, 20, FPS) == (1, 2, 3)
    # A 20 ms span between two instants: the frame nearest its middle, and the one before.
    assert closure_frames(0.11, 0.13, 20, FPS) == (1, 2)
    assert closure_frames(0.0, 0.01, 20, FPS, lead=0.04) == (0,)


def test_closure_checks_fail_when_the_lips_stay_open():
    phonemes = timings(("^", 0.1), ("p", 0.06), ("ɑ", 0.2), ("b", 0.06), ("$", 0.1))
    openings = np.full(14, 0.3)
    checks = closure_checks(phonemes, openings, FPS, threshold=0.08)
    assert [c.phoneme for c in checks] == ["p", "b"] and not any(c.closed for c in checks)
    openings[checks[0].frames[0]] = 0.02  # closed one frame early: accepted (the lead)
    openings[checks[1].frames[-1]] = math.nan  # no face found: never counts as closed
    checks = closure_checks(phonemes, openings, FPS, threshold=0.08)
    assert [c.closed for c in checks] == [True, False]


# -- the default renderer, measured ---------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return LandmarkDetector(upsample=0)


@pytest.fixture(scope="module")
def avatar(detector) -> PhotoAvatar:
    return load_default_avatar(detector)


@pytest.fixture(scope="module")
def renderer(avatar) -> PhotoWarpRenderer:
    return PhotoWarpRenderer(avatar, fps=FPS, device="cpu")


@pytest.fixture(scope="module")
def speech() -> list[SpeechChunk]:
    from models.tts import PiperTTS

    tts = PiperTTS()
    chunks = [next(iter(tts.synthesize(text))) for text in SENTENCES]
    assert all(c.phonemes for c in chunks)
    return chunks


@pytest.fixture(scope="module")
def accuracy(renderer, avatar, detector) -> LipSyncAccuracy:
    return LipSyncAccuracy.for_photo(renderer, avatar, OpeningMeter(detector))


def test_default_renderer_closes_on_pbm_and_opens_with_the_vowels(accuracy, speech):
    measured = [accuracy.measure(chunk) for chunk in speech]
    summary = summarise(measured)
    assert summary.missed_detections == 0, "dlib lost the face in rendered frames"
    assert summary.closures >= 12, summary
    failed = [(m.text, c) for m in measured for c in m.closures if not c.closed]
    assert summary.closure_share >= 0.9, f"lips stay open on p/b/m: {failed}"
    assert summary.r >= 0.7, f"re-detected opening follows the phonemes with r={summary.r:.2f} only ({summary})"


class _LateSource(FrameSource):
    """Deliberately broken: the real frames shown `delay` frames late (the photo at rest before them)."""

    def __init__(self, inner: FrameSource, still: np.ndarray, delay: int) -> None:
        self.n_frames = inner.n_frames
        self._frames = [still] * delay + inner.render(0, inner.n_frames - delay)

    def render(self, start: int, count: int) -> list[np.ndarray]:
        return self._frames[start : start + count]


class _LateRenderer(LipSyncRenderer):
    def __init__(self, inner: PhotoWarpRenderer, delay: int) -> None:
        self.inner, self.delay = inner, delay
        self.width, self.height, self.fps = inner.width, inner.height, inner.fps

    def idle_frame(self, tick: int) -> np.ndarray:
        return self.inner.idle_frame(tick)

    def begin(self, speech: SpeechChunk, tick: int) -> FrameSource:
        return _LateSource(self.inner.begin(speech, tick), self.inner.idle_frame(tick), self.delay)


def test_a_late_mouth_fails_the_measurement(renderer, avatar, detector, speech):
    # 120 ms late: a lag viewers notice. The same measurement must reject it. (The sentence
    # with sparser closures: in "pumpkin pie" a late closure often lands on the next p.)
    late = LipSyncAccuracy.for_photo(_LateRenderer(renderer, delay=3), avatar, OpeningMeter(detector))
    summary = summarise([late.measure(speech[1])])
    assert summary.closure_share <= 0.5, summary
    assert summary.r < 0.3, summary
