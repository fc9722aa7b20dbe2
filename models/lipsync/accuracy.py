"""Lip-sync accuracy measured on rendered frames, independently of the renderer's internals.

The renderer is treated as a black box: its yuv420p frames are converted to RGB with
PyAV, the face is re-detected with dlib on every frame, and the mouth opening is read
from the re-detected inner lips (mean of |61-67|, |62-66|, |63-65| over |60-64|, see
reference/faces.md). That opening is compared with what the TTS phoneme timings say the
mouth should do:

- closure: every p/b/m must show closed lips in a frame of its span (or the frame one
  lead earlier, since renderers show the mouth shape slightly before the sound);
- correlation: per frame, the expected openness is the time-weighted `openness()` of the
  phonemes in the frame's window, lightly smoothed; Pearson r against the re-detected
  opening over the speech frames.

"Closed" is judged against the avatar photo itself (its own dlib opening at rest), never
against a renderer parameter.
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.avatar.landmarks import LandmarkDetector
from models.avatar.photo import PhotoAvatar
from models.lipsync.renderer import LipSyncRenderer
from models.lipsync.visemes import openness
from models.speech import PhonemeTiming, SpeechChunk

CLOSED_MAX = 0.08  # inner gap of at most 8% of the mouth width reads as closed lips (~3 px on a 40 px mouth)
RENDER_LEAD = 0.04  # the lead of the mouth over the sound that renderers document (visemes.mouth_track)
CLOSURE_PHONEMES = frozenset("pbm")
LONG_SPACE = 0.12  # a word gap at least this long is a pause (mouth at rest), else it joins its neighbours
_STRESS = frozenset("ˈˌ")
_PAUSES = frozenset("^$_")  # Piper's sentence start/end and padding markers
_INNER_GAPS = ((61, 67), (62, 66), (63, 65))


def inner_lip_opening(points: np.ndarray) -> float:
    """Mean inner-lip gap over the inner mouth width, from (68, 2) dlib landmarks."""
    p = np.asarray(points, dtype=np.float64)
    width = float(np.linalg.norm(p[64] - p[60]))
    if not width > 0.0:  # also NaN points (no face)
        return math.nan
    gap = np.mean([np.linalg.norm(p[a] - p[b]) for a, b in _INNER_GAPS])
    return float(gap / width)


def closed_threshold(rest_opening: float) -> float:
    """Largest opening that counts as closed lips for an avatar whose photo opens `rest_opening` at rest.

    A photo that parts its lips at rest (a smile showing teeth) must close visibly below
    that: at most half its rest gap, and never above CLOSED_MAX. A closed-lip photo is
    already closed at rest, so CLOSED_MAX alone applies.
    """
    if not math.isfinite(rest_opening) or rest_opening <= CLOSED_MAX:
        return CLOSED_MAX
    return min(CLOSED_MAX, 0.5 * rest_opening)


CLOSED_RULE = (
    f"closed = re-detected opening <= min({CLOSED_MAX}, rest/2) when the photo's own dlib opening at rest "
    f"exceeds {CLOSED_MAX}, else <= {CLOSED_MAX}"
)


def yuv420p_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Packed yuv420p (H * 3 // 2, W) uint8 -> (H, W, 3) uint8 RGB, converted by PyAV (swscale), as a viewer would."""
    import av

    return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="yuv420p").to_ndarray(format="rgb24")


class OpeningMeter:
    """Re-detects the one face in frames with dlib and reads its mouth opening.

    detector: used first (default: dlib without upsampling, about 6x faster than with it and
    enough for faces over ~80 px). A frame where it finds no face is tried once more with
    an upsampling detector; where that also fails the opening is NaN.
    """

    def __init__(self, detector: LandmarkDetector | None = None) -> None:
        self._detector = detector or LandmarkDetector(upsample=0)
        self._fallback: LandmarkDetector | None = None
        self.misses = 0

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """(68, 2) points of the best-scoring face in an RGB image, or None."""
        faces = self._detector.detect(rgb)
        if not faces:
            if self._fallback is None:
                self._fallback = LandmarkDetector(upsample=self._detector.upsample + 1, min_score=0.0)
            faces = self._fallback.detect(rgb)
        if not faces:
            self.misses += 1
            return None
        return faces[0].points

    def frame_landmarks(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 68, 2) points per yuv420p frame, NaN where no face was found."""
        out = np.full((len(frames), 68, 2), np.nan, dtype=np.float64)
        for i, frame in enumerate(frames):
            points = self.landmarks(yuv420p_to_rgb(frame))
            if points is not None:
                out[i] = points
        return out

    def openings(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Opening per yuv420p frame (NaN where no face was found)."""
        return np.array([inner_lip_opening(p) for p in self.frame_landmarks(frames)], dtype=np.float64)


# ---------------------------------------------------------------------------------------
# What the phoneme timings say the mouth should do.


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """The instant each frame shows: (i + 0.5) / fps."""
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / fps


def _base(symbol: str) -> str:
    """The first letter of a phoneme symbol, or '' when it has none (marks, punctuation, spaces)."""
    for c in unicodedata.normalize("NFD", symbol):
        if unicodedata.category(c).startswith("L") and unicodedata.category(c) != "Lm":
            return c
    return ""


def is_closure_phoneme(symbol: str) -> bool:
    """p, b or m (a bilabial closure)."""
    return _base(symbol) in CLOSURE_PHONEMES


def _is_mark(symbol: str) -> bool:
    """Stress, length and other modifier marks: time that belongs to a neighbouring phone."""
    s = unicodedata.normalize("NFD", symbol)
    if s in _PAUSES:  # ^ is a modifier symbol to unicodedata, but a pause to Piper
        return False
    return bool(s) and all(
        c in _STRESS or unicodedata.category(c) in ("Lm", "Sk") or unicodedata.combining(c) for c in s
    )


def openness_segments(phonemes: Sequence[PhonemeTiming]) -> list[tuple[float, float, float]]:
    """(start, end, expected openness) spans covering the timings, marks handed to their phones.

    Phonetic conventions only: a stress mark's time goes to the phone after it, a length
    or modifier mark's to the phone before it, a short word gap is split between its
    neighbours; pauses (punctuation, Piper's ^ $ _, long gaps) are 0 (mouth at rest).
    """
    segs: list[list[float]] = []  # [start, end, value, is_phone]
    carry: float | None = None  # start handed forward by a stress mark
    for p in phonemes:
        if p.end <= p.start:
            continue
        symbol = p.phoneme
        if symbol.isspace() or symbol == "":
            if p.end - p.start < LONG_SPACE and segs and segs[-1][3]:
                mid = 0.5 * (p.start + p.end)
                segs[-1][1] = mid
                carry = mid if carry is None else carry
            else:
                segs.append([carry if carry is not None else p.start, p.end, 0.0, 0.0])
                carry = None
            continue
        if _is_mark(symbol):
            if symbol[0] in _STRESS:
                carry = p.start if carry is None else carry
            elif segs and segs[-1][3]:
                segs[-1][1] = p.end
            else:
                carry = p.start if carry is None else carry
            continue
        is_phone = bool(_base(symbol)) and symbol not in _PAUSES
        value = openness(symbol) if is_phone else 0.0
        segs.append([carry if carry is not None else p.start, p.end, value, 1.0 if is_phone else 0.0])
        carry = None
    return [(s, e, v) for s, e, v, _ in segs if e > s]


def expected_openness(
    phonemes: Sequence[PhonemeTiming], n_frames: int, fps: float, lead: float = RENDER_LEAD, smooth: bool = True,
    closures: bool = True,
) -> np.ndarray:
    """Per frame, the time-weighted openness of the phonemes in its 1/fps window (shifted `lead` later), smoothed 1-2-1.

    With `closures`, a p/b/m is a moment of zero opening however short: the frame whose
    instant falls in its span (or the one nearest its middle) expects 0, which averaging over
    a window would otherwise blur into its neighbours' vowels.
    """
    times = frame_times(n_frames, fps) + lead
    half = 0.5 / fps
    out = np.zeros(n_frames, dtype=np.float64)
    segs = openness_segments(phonemes)
    if not segs or n_frames == 0:
        return out
    starts, ends, values = (np.array(col, dtype=np.float64) for col in zip(*segs))
    overlap = np.minimum(ends[None, :], times[:, None] + half) - np.maximum(starts[None, :], times[:, None] - half)
    overlap = np.clip(overlap, 0.0, None)
    out = (overlap @ values) / (2.0 * half)  # time outside all spans is rest (0)
    if smooth and n_frames >= 3:
        padded = np.pad(out, 1, mode="edge")
        out = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    if closures:
        for p in phonemes:
            if is_closure_phoneme(p.phoneme):
                inside = np.flatnonzero((times >= p.start) & (times <= p.end))
                if not len(inside):
                    inside = [int(np.argmin(np.abs(times - 0.5 * (p.start + p.end))))]
                out[inside] = 0.0
    return out


def speech_mask(phonemes: Sequence[PhonemeTiming], n_frames: int, fps: float, lead: float = RENDER_LEAD) -> np.ndarray:
    """Frames whose (lead-shifted) instant lies between the first and the last spoken phone."""
    phones = [p for p in phonemes if _base(p.phoneme) and p.phoneme not in _PAUSES]
    if not phones:
        return np.zeros(n_frames, dtype=bool)
    times = frame_times(n_frames, fps) + lead
    return (times >= phones[0].start) & (times <= phones[-1].end)


@dataclass(frozen=True)
class ClosureCheck:
    """One p/b/m: its span, the frames judged, the smallest opening among them and the verdict."""

    phoneme: str
    start: float
    end: float
    frames: tuple[int, ...]
    opening: float
    closed: bool


def closure_frames(start: float, end: float, n_frames: int, fps: float, lead: float = RENDER_LEAD) -> tuple[int, ...]:
    """Frames that may show the closure of a phoneme spanning [start, end]: those whose instant
    falls inside it (else the one nearest its middle), plus the frame(s) one lead earlier."""
    times = frame_times(n_frames, fps)
    inside = np.flatnonzero((times >= start) & (times <= end))
    if len(inside):
        first, last = int(inside[0]), int(inside[-1])
    else:
        first = last = int(round(0.5 * (start + end) * fps - 0.5))
    shift = max(1, int(round(lead * fps))) if lead > 0 else 0
    return tuple(i for i in range(first - shift, last + 1) if 0 <= i < n_frames)


def closure_checks(
    phonemes: Sequence[PhonemeTiming], openings: np.ndarray, fps: float, threshold: float, lead: float = RENDER_LEAD
) -> list[ClosureCheck]:
    """One check per p/b/m in the timings, against the re-detected openings of the frames."""
    checks = []
    for p in phonemes:
        if not is_closure_phoneme(p.phoneme):
            continue
        frames = closure_frames(p.start, p.end, len(openings), fps, lead)
        values = openings[list(frames)] if frames else np.array([math.nan])
        # A frame without a face cannot show a closure: NaN counts as open.
        smallest = float(np.nanmin(values)) if np.isfinite(values).any() else math.nan
        checks.append(ClosureCheck(p.phoneme, p.start, p.end, frames, smallest, bool(smallest <= threshold)))
    return checks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the pairs where both are finite (NaN if fewer than 3 or one side is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# ---------------------------------------------------------------------------------------
# Measuring a renderer.


@dataclass(frozen=True, eq=False)
class SentenceMeasurement:
    """One spoken sentence as rendered and re-detected; arrays are per frame."""

    text: str
    phonemes: tuple[PhonemeTiming, ...]
    fps: int
    frames: list[np.ndarray]  # the rendered yuv420p frames when kept, else empty
    points: np.ndarray  # (n, 68, 2) re-detected landmarks, NaN where no face was found
    openings: np.ndarray
    expected: np.ndarray
    speech: np.ndarray
    closures: list[ClosureCheck]
    # The renderer's own per-frame mouth parameters (n, len(MOUTH_PARAMS)) when its frame source
    # exposes them as `track`: for context only, never part of the independent figures.
    renderer_track: np.ndarray | None

    @property
    def renderer_open(self) -> np.ndarray | None:
        from models.lipsync.mouth import OPEN

        return None if self.renderer_track is None else self.renderer_track[:, OPEN].astype(np.float64)

    @property
    def r(self) -> float:
        return pearson(self.openings[self.speech], self.expected[self.speech])


@dataclass(frozen=True)
class AccuracySummary:
    """Figures over many sentences: closure share and Pearson r over all speech frames."""

    closures: int
    closed: int
    frames: int
    speech_frames: int
    missed_detections: int
    r: float
    r_renderer_open: float

    @property
    def closure_share(self) -> float:
        return self.closed / self.closures if self.closures else math.nan


class LipSyncAccuracy:
    """Renders speech with any LipSyncRenderer and measures its lip-sync on the re-detected frames."""

    def __init__(self, renderer: LipSyncRenderer, rest_opening: float, meter: OpeningMeter | None = None,
                 lead: float = RENDER_LEAD) -> None:
        self.renderer = renderer
        self.meter = meter or OpeningMeter()
        self.rest_opening = float(rest_opening)
        self.threshold = closed_threshold(self.rest_opening)
        self.lead = lead

    @classmethod
    def for_photo(cls, renderer: LipSyncRenderer, avatar: PhotoAvatar, meter: OpeningMeter | None = None,
                  lead: float = RENDER_LEAD) -> "LipSyncAccuracy":
        """Judge closures against the photo's own opening at rest (its dlib landmarks)."""
        return cls(renderer, inner_lip_opening(avatar.landmarks), meter, lead)

    def measure(self, speech: SpeechChunk, tick: int = 0, keep_frames: bool = False) -> SentenceMeasurement:
        """Render all frames of `speech` (which must carry phoneme timings) and measure them."""
        if not speech.phonemes:
            raise ValueError("accuracy needs phoneme timings: synthesize the speech with PiperTTS")
        source = self.renderer.begin(speech, tick)
        frames = source.render(0, source.n_frames)
        fps = self.renderer.fps
        points = self.meter.frame_landmarks(frames)
        openings = np.array([inner_lip_opening(p) for p in points], dtype=np.float64)
        track = getattr(source, "track", None)  # not part of FrameSource: context only
        if not (isinstance(track, np.ndarray) and track.ndim == 2 and len(track) == len(frames)):
            track = None
        return SentenceMeasurement(
            text=speech.text,
            phonemes=tuple(speech.phonemes),
            fps=fps,
            frames=frames if keep_frames else [],
            points=points,
            openings=openings,
            expected=expected_openness(speech.phonemes, len(frames), fps, self.lead),
            speech=speech_mask(speech.phonemes, len(frames), fps, self.lead),
            closures=closure_checks(speech.phonemes, openings, fps, self.threshold, self.lead),
            renderer_track=None if track is None else np.array(track, dtype=np.float64),
        )


def summarise(measurements: Sequence[SentenceMeasurement]) -> AccuracySummary:
    """Pool the sentences: every p/b/m, and every speech frame, counts once."""
    checks = [c for m in measurements for c in m.closures]
    opening = np.concatenate([m.openings[m.speech] for m in measurements]) if measurements else np.zeros(0)
    expected = np.concatenate([m.expected[m.speech] for m in measurements]) if measurements else np.zeros(0)
    if measurements and all(m.renderer_open is not None for m in measurements):
        own = np.concatenate([m.renderer_open[m.speech] for m in measurements])
        r_own = pearson(opening, own)
    else:
        r_own = math.nan
    return AccuracySummary(
        closures=len(checks),
        closed=sum(c.closed for c in checks),
        frames=sum(len(m.openings) for m in measurements),
        speech_frames=int(sum(m.speech.sum() for m in measurements)),
        missed_detections=int(sum(np.isnan(m.openings).sum() for m in measurements)),
        r=pearson(opening, expected),
        r_renderer_open=r_own,
    )
