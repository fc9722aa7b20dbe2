"""Phonemes (or bare audio) to per-frame mouth parameters.

Piper gives one IPA code point per "phoneme" with its span in seconds. This module maps
them to the Oculus-15 visemes, builds a timeline, and samples it at the video frame rate
with co-articulation, smoothing and forced lip closures. Audio without phonemes gets an
energy/spectrum driven track instead. Everything is plain numpy and cheap (about 0.2 ms
per second of speech from phonemes, about 1 ms per second from 48 kHz audio).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from models.lipsync.mouth import BITE, MOUTH_PARAMS, N_MOUTH_PARAMS, OPEN, PRESS, ROUND, WIDE
from models.speech import PhonemeTiming

# Target mouth per viseme, in MOUTH_PARAMS order: (open, wide, round, press, bite).
_TARGETS: dict[str, tuple[float, float, float, float, float]] = {
    "sil": (0.0, 0.0, 0.0, 0.0, 0.0),
    "PP": (0.0, 0.0, 0.0, 1.0, 0.0),
    "FF": (0.1, 0.2, 0.0, 0.0, 1.0),
    "TH": (0.22, 0.3, 0.0, 0.0, 0.0),
    "DD": (0.25, 0.35, 0.0, 0.0, 0.0),
    "kk": (0.32, 0.25, 0.0, 0.0, 0.0),
    "CH": (0.2, 0.0, 0.6, 0.0, 0.0),   # sh/zh protrude the lips
    "SS": (0.12, 0.6, 0.0, 0.0, 0.0),  # teeth almost together, lips spread
    "nn": (0.25, 0.3, 0.0, 0.0, 0.0),
    "RR": (0.28, 0.0, 0.5, 0.0, 0.0),
    "aa": (0.9, 0.3, 0.0, 0.0, 0.0),
    "E": (0.55, 0.55, 0.0, 0.0, 0.0),
    "ih": (0.3, 0.7, 0.0, 0.0, 0.0),
    "oh": (0.55, 0.0, 0.7, 0.0, 0.0),
    "ou": (0.25, 0.0, 1.0, 0.0, 0.0),
}
VISEME_TARGETS: Mapping[str, np.ndarray] = MappingProxyType(
    {name: np.asarray(vec, dtype=np.float32) for name, vec in _TARGETS.items()}
)
VISEMES: tuple[str, ...] = tuple(_TARGETS)

# IPA code point -> (viseme, intensity). Reduced vowels get less than full intensity.
_PHONEME_VISEMES: dict[str, tuple[str, float]] = {}
for _viseme, _symbols, _weight in (
    ("PP", "pbmɱ", 1.0),
    ("FF", "fvɸβ", 1.0),
    ("TH", "θð", 1.0),
    ("DD", "tdɾʔ", 1.0),
    ("kk", "kɡgŋxɣqχ", 1.0),
    ("CH", "ʃʒɕʑç", 1.0),
    ("SS", "sz", 1.0),
    ("nn", "nlɲʎɫ", 1.0),
    ("RR", "ɹrʁɻɝɜ", 1.0),
    ("RR", "ɚ", 0.8),
    ("aa", "ɑaʌæɒ", 1.0),
    ("aa", "ɐ", 0.7),
    ("aa", "ə", 0.5),
    ("E", "eɛøœ", 1.0),
    ("ih", "iɪjyɨ", 1.0),
    ("ih", "ᵻ", 0.6),
    ("oh", "oɔ", 1.0),
    ("ou", "uʊwɯ", 1.0),
):
    for _symbol in _symbols:
        _PHONEME_VISEMES[_symbol] = (_viseme, _weight)
PHONEME_VISEMES: Mapping[str, tuple[str, float]] = MappingProxyType(_PHONEME_VISEMES)
del _viseme, _symbols, _weight, _symbol, _PHONEME_VISEMES

_VOWEL_VISEMES = frozenset({"aa", "E", "ih", "oh", "ou"})
_STRESS = frozenset("ˈˌ")
_LENGTHEN = frozenset("ːˑ")
_H = frozenset("hɦ")
_H_INTENSITY = 0.6
_CLOSURES = ("PP", "FF")  # never smoothed away: each gets a full-weight frame


@dataclass(frozen=True, slots=True)
class VisemeSegment:
    """One viseme held from start to end (seconds) at weight in [0, 1]."""

    viseme: str
    start: float
    end: float
    weight: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def _kind(symbol: str) -> str:
    """Classify one code point: phone, h, stress, lengthen, space or pause."""
    if symbol in PHONEME_VISEMES:
        return "phone"
    if symbol in _H:
        return "h"
    if symbol in _STRESS:
        return "stress"
    category = unicodedata.category(symbol)
    if symbol in _LENGTHEN or unicodedata.combining(symbol) or category == "Lm":
        # Syllabic mark, tie bars, aspiration, palatalisation...: belong to the previous phone.
        return "lengthen"
    if symbol.isspace():
        return "space"
    if category.startswith("L"):
        return "phone"  # a letter we have no row for (another language): a neutral consonant
    return "pause"  # punctuation, Piper's ^ $ _ markers


_UNKNOWN_LETTER = ("nn", 0.6)


def _split_symbols(phonemes: Sequence[PhonemeTiming]) -> list[tuple[str, float, float]]:
    """One entry per code point; multi-character symbols (merged diphthongs, affricates) split 60/40."""
    units: list[tuple[str, float, float]] = []
    for p in phonemes:
        symbol = unicodedata.normalize("NFD", p.phoneme)
        if len(symbol) <= 1:
            units.append((symbol or " ", p.start, p.end))
            continue
        # Marks inside a symbol ride along with their base, so split on base letters only.
        bases = [c for c in symbol if _kind(c) in ("phone", "h")]
        if len(bases) <= 1:
            units.append((bases[0] if bases else symbol[0], p.start, p.end))
            continue
        span = p.end - p.start
        first_end = p.start + 0.6 * span
        rest = (p.end - first_end) / (len(bases) - 1)
        units.append((bases[0], p.start, first_end))
        for k, c in enumerate(bases[1:]):
            units.append((c, first_end + k * rest, first_end + (k + 1) * rest))
    return units


def build_timeline(
    phonemes: Sequence[PhonemeTiming], space_pause: float = 0.12
) -> list[VisemeSegment]:
    """Map Piper phonemes to a contiguous, time-ordered list of viseme segments.

    Stress marks hand their time to the next phone, length/syllabic marks to the previous
    one; a word space is shared by its neighbours unless it lasts at least `space_pause`
    seconds (then it is silence); h takes the next vowel's shape at reduced intensity.
    """
    units = _split_symbols(phonemes)
    kinds = [_kind(u[0]) for u in units]
    # [viseme, start, end, weight] kept mutable while neighbours adjust each other.
    segs: list[list] = []
    carry_start: float | None = None  # time handed forward by stress marks / spaces
    for i, ((symbol, start, end), kind) in enumerate(zip(units, kinds)):
        if kind == "stress":
            carry_start = start if carry_start is None else carry_start
            continue
        if kind == "lengthen":
            if segs and segs[-1][0] != "sil":
                segs[-1][2] = max(segs[-1][2], end)
            else:
                carry_start = start if carry_start is None else carry_start
            continue
        if kind == "space":
            if end - start >= space_pause or not segs or segs[-1][0] == "sil":
                segs.append(["sil", carry_start if carry_start is not None else start, end, 0.0])
                carry_start = None
            else:
                mid = 0.5 * (start + end)
                segs[-1][2] = max(segs[-1][2], mid)
                carry_start = mid if carry_start is None else carry_start
            continue
        if kind == "pause":
            segs.append(["sil", carry_start if carry_start is not None else start, end, 0.0])
            carry_start = None
            continue
        if kind == "h":
            viseme, weight = _h_shape(units, kinds, i)
        else:
            viseme, weight = PHONEME_VISEMES.get(symbol, _UNKNOWN_LETTER)
        segs.append([viseme, carry_start if carry_start is not None else start, end, weight])
        carry_start = None
    if carry_start is not None and units:
        segs.append(["sil", carry_start, units[-1][2], 0.0])
    out: list[VisemeSegment] = []
    for k, (viseme, start, end, weight) in enumerate(segs):
        if k + 1 < len(segs):
            end = min(end, segs[k + 1][1])  # overlapping input: the later phone wins
        if end > start:
            out.append(VisemeSegment(viseme, float(start), float(end), float(weight)))
    return out


def _h_shape(units: list[tuple[str, float, float]], kinds: list[str], i: int) -> tuple[str, float]:
    """h is shaped by the vowel that follows it (the mouth is already there)."""
    for j in range(i + 1, len(units)):
        if kinds[j] in ("stress", "lengthen"):
            continue
        if kinds[j] == "phone":
            viseme, weight = PHONEME_VISEMES.get(units[j][0], _UNKNOWN_LETTER)
            if viseme in _VOWEL_VISEMES:
                return viseme, _H_INTENSITY * weight
        break
    return "E", 0.3


def openness(phoneme: str) -> float:
    """Expected mouth opening in [0, 1] of one phoneme on its own (0 for marks and pauses)."""
    symbol = unicodedata.normalize("NFD", phoneme)
    bases = [c for c in symbol if _kind(c) in ("phone", "h")]
    if not bases:
        return 0.0
    c = bases[0]
    if c in _H:
        return 0.35  # context free: a half-open breath
    viseme, weight = PHONEME_VISEMES.get(c, _UNKNOWN_LETTER)
    return float(VISEME_TARGETS[viseme][OPEN] * weight)


def _merge_short(segs: list[VisemeSegment], min_segment: float) -> list[VisemeSegment]:
    """Drop non-closure segments shorter than min_segment; their neighbours share the time."""
    kept: list[VisemeSegment] = []
    pending_start: float | None = None
    for k, s in enumerate(segs):
        short = s.duration < min_segment and s.viseme not in _CLOSURES and s.viseme != "sil"
        if short and (kept or k + 1 < len(segs)):
            if not kept:
                pending_start = s.start
            elif k + 1 < len(segs):
                mid = 0.5 * (s.start + s.end)
                prev = kept[-1]
                kept[-1] = VisemeSegment(prev.viseme, prev.start, mid, prev.weight)
                pending_start = mid
            else:
                prev = kept[-1]
                kept[-1] = VisemeSegment(prev.viseme, prev.start, s.end, prev.weight)
            continue
        start = pending_start if pending_start is not None else s.start
        kept.append(VisemeSegment(s.viseme, start, s.end, s.weight))
        pending_start = None
    return kept


def _hold_short_pauses(segs: list[VisemeSegment], hold_pause: float) -> list[VisemeSegment]:
    """A brief pause inside speech keeps the previous shape, half relaxed, instead of snapping shut."""
    out = list(segs)
    for k in range(1, len(out) - 1):
        s = out[k]
        if (
            s.viseme == "sil"
            and s.duration < hold_pause
            and out[k - 1].viseme != "sil"
            and out[k + 1].viseme != "sil"
        ):
            prev = out[k - 1]
            out[k] = VisemeSegment(prev.viseme, s.start, s.end, 0.5 * prev.weight)
    return out


def _speech_gate(
    segs: list[VisemeSegment], times: np.ndarray, long_pause: float, relax: float, pre: float
) -> np.ndarray:
    """1 during speech (gaps shorter than long_pause bridged), ramping to exactly 0 after it."""
    intervals: list[list[float]] = []
    for s in segs:
        if s.viseme == "sil" or s.weight <= 0.0:
            continue
        if intervals and s.start - intervals[-1][1] < long_pause:
            intervals[-1][1] = max(intervals[-1][1], s.end)
        else:
            intervals.append([s.start, s.end])
    gate = np.zeros(len(times), dtype=np.float32)
    for k, (start, end) in enumerate(intervals):
        ramp = relax
        if k == len(intervals) - 1 and times[-1] > end:
            # Relax faster if need be so the chunk's last frame is at rest: the next chunk
            # or the idle face starts from rest too.
            ramp = min(relax, float(times[-1]) - end)
        g = np.clip(1.0 - (times - end) / ramp, 0.0, 1.0)
        g[times < start - pre] = 0.0
        np.maximum(gate, g, out=gate)
    return gate


def _smoothing_coefficients(fps: float, attack: float, release: float) -> tuple[float, float]:
    dt = 1.0 / fps
    return 1.0 - math.exp(-dt / attack), 1.0 - math.exp(-dt / release)


def _closure_frames(
    segs: list[VisemeSegment], n_frames: int, fps: float
) -> dict[int, str]:
    """Frames that must show a full closure: the frames inside each PP/FF span, else the nearest one."""
    forced: dict[int, str] = {}
    for viseme in _CLOSURES:  # PP first: if a p and an f want the same frame, the p wins
        for s in segs:
            if s.viseme != viseme:
                continue
            first = math.ceil(s.start * fps - 0.5)
            last = math.floor(s.end * fps - 0.5)
            if first <= last:
                candidates = [i for i in range(first, last + 1) if 0 <= i < n_frames]
            else:
                centre = 0.5 * (s.start + s.end) * fps - 0.5
                nearest = int(round(centre))
                if not -1 <= nearest <= n_frames:
                    continue  # the phoneme lies outside the frames asked for
                nearest = min(max(nearest, 0), n_frames - 1)
                # Try the nearest frame, then its neighbours, so a clash does not drop the closure.
                order = sorted(
                    (i for i in (nearest - 1, nearest, nearest + 1) if 0 <= i < n_frames),
                    key=lambda i: abs(i - centre),
                )
                free = [i for i in order if forced.get(i, viseme) == viseme]
                candidates = free[:1] or order[:1]
            for i in candidates:
                forced.setdefault(i, viseme)
    return forced


def mouth_track(
    phonemes: Sequence[PhonemeTiming],
    n_frames: int,
    fps: int,
    lead: float = 0.04,
    *,
    window: float | None = None,
    attack: float = 0.025,
    release: float = 0.06,
    min_segment: float = 0.03,
    hold_pause: float = 0.12,
    long_pause: float = 0.3,
    relax: float = 0.15,
) -> np.ndarray:
    """Mouth parameters per video frame, shape (n_frames, len(MOUTH_PARAMS)), float32 in [0, 1].

    Row i describes the mouth at time (i + 0.5) / fps. The face leads the sound by `lead`
    seconds; each frame blends the visemes overlapping a `window` around it (co-articulation),
    then a fast-attack / slow-release filter smooths it. Every p/b/m gets a fully closed
    frame (press 1, open 0) and every f/v bites, whatever the smoothing did. Pauses longer than
    `long_pause` relax to rest over `relax` seconds, and so does the end of speech.
    """
    if n_frames <= 0:
        return np.zeros((0, N_MOUTH_PARAMS), dtype=np.float32)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    raw = [
        VisemeSegment(s.viseme, s.start - lead, s.end - lead, s.weight)
        for s in build_timeline(phonemes)
    ]
    raw = [s for s in raw if s.end > s.start]
    times = (np.arange(n_frames, dtype=np.float64) + 0.5) / fps
    if not raw:
        return np.zeros((n_frames, N_MOUTH_PARAMS), dtype=np.float32)
    segs = _hold_short_pauses(_merge_short(raw, min_segment), hold_pause)

    # Co-articulation: each frame sees the weighted share of every segment in its window.
    half = 0.5 * (window if window is not None else max(1.0 / fps, 0.05))
    starts = np.fromiter((s.start for s in segs), dtype=np.float64, count=len(segs))
    ends = np.fromiter((s.end for s in segs), dtype=np.float64, count=len(segs))
    weights = np.fromiter((s.weight for s in segs), dtype=np.float64, count=len(segs))
    vecs = np.stack([VISEME_TARGETS[s.viseme] for s in segs]).astype(np.float64)
    lo, hi = times - half, times + half
    overlap = np.minimum(ends[None, :], hi[:, None]) - np.maximum(starts[None, :], lo[:, None])
    np.clip(overlap, 0.0, None, out=overlap)
    target = (overlap / (2.0 * half)) @ (weights[:, None] * vecs)
    # Pressing and biting are not blended into neighbouring frames: they happen on the
    # closure frames only, so the lips open for the next vowel as soon as it sounds.
    target[:, [PRESS, BITE]] = 0.0

    gate = _speech_gate(segs, times, long_pause, relax, pre=half + 1.0 / fps)
    # Closures are placed on the consonant's own span, not the span widened into a word gap,
    # so the lips are shut when the p/b/m/f/v is heard rather than a gap earlier.
    own = [VisemeSegment(PHONEME_VISEMES[p.phoneme][0], p.start - lead, p.end - lead, 1.0)
           for p in phonemes
           if p.phoneme in PHONEME_VISEMES and PHONEME_VISEMES[p.phoneme][0] in _CLOSURES]
    forced = _closure_frames(own, n_frames, fps)
    a_up, a_release = _smoothing_coefficients(fps, attack, release)
    # Lips leave a closure or a bite with a fast burst, not a slow fade.
    a_down = np.full(N_MOUTH_PARAMS, a_release)
    a_down[[PRESS, BITE]] = a_up

    out = np.empty((n_frames, N_MOUTH_PARAMS), dtype=np.float64)
    state = np.zeros(N_MOUTH_PARAMS, dtype=np.float64)
    for i in range(n_frames):
        x = target[i]
        state += np.where(x > state, a_up, a_down) * (x - state)
        state *= gate[i]
        state[[PRESS, BITE]] = 0.0
        kind = forced.get(i)
        if kind == "PP":
            state[OPEN] = 0.0
            state[PRESS] = 1.0
            state[BITE] = 0.0
            state[WIDE] = min(state[WIDE], 0.3)
        elif kind == "FF":
            state[BITE] = 1.0
            state[PRESS] = 0.0
            state[OPEN] = min(state[OPEN], 0.15)
            state[ROUND] = min(state[ROUND], 0.3)
        out[i] = state
    out[out < 1e-3] = 0.0
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def _attack_release(x: np.ndarray, fps: float, attack: float, release: float) -> np.ndarray:
    a_up, a_down = _smoothing_coefficients(fps, attack, release)
    out = np.empty_like(x)
    state = np.zeros(x.shape[1], dtype=x.dtype)
    for i in range(len(x)):
        state += np.where(x[i] > state, a_up, a_down) * (x[i] - state)
        out[i] = state
    return out


def audio_mouth_track(
    audio: np.ndarray,
    sample_rate: int,
    n_frames: int,
    fps: int,
    *,
    floor_db: float = -50.0,
    peak_db: float = -20.0,
    attack: float = 0.02,
    release: float = 0.07,
) -> np.ndarray:
    """Mouth parameters per frame read from int16 audio alone (no phonemes).

    Loudness (RMS in dBFS, mapped from [floor_db, peak_db] to [0, 1]) opens the jaw;
    low-band (300-1000 Hz) energy opens it further, high-band energy (sibilants) narrows
    it and spreads the lips. Silence below floor_db is exactly rest.
    """
    if n_frames <= 0:
        return np.zeros((0, N_MOUTH_PARAMS), dtype=np.float32)
    if sample_rate <= 0 or fps <= 0:
        raise ValueError(f"sample_rate and fps must be positive, got {sample_rate} and {fps}")
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {x.shape}")
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)

    # One loudness window per frame, centred on the frame time, at least 25 ms long.
    length = max(int(round(sample_rate / fps)), int(round(0.025 * sample_rate)))
    starts = np.round((np.arange(n_frames) + 0.5) * sample_rate / fps).astype(np.int64)
    # starts index the padded signal, where sample k sits at k + length // 2.
    tail = max(0, int(starts[-1]) + length - len(x))
    padded = np.concatenate(
        [np.zeros(length // 2, np.float32), x, np.zeros(tail, np.float32)]
    )
    frames = np.lib.stride_tricks.sliding_window_view(padded, length)[starts]

    rms = np.sqrt(np.einsum("ij,ij->i", frames, frames) / length + 1e-12)
    db = 20.0 * np.log10(rms)
    level = np.clip((db - floor_db) / (peak_db - floor_db), 0.0, 1.0) ** 0.8

    # The spectral cue only needs ~20 ms around the frame centre: a power-of-two FFT of that.
    n_fft = min(1 << max(int(0.016 * sample_rate) - 1, 1).bit_length(), length)
    offset = (length - n_fft) // 2
    window = np.hanning(n_fft).astype(np.float32)
    spectrum = np.fft.rfft(frames[:, offset : offset + n_fft] * window, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    bands = np.stack(
        [freqs >= 80.0, (freqs >= 300.0) & (freqs < 1000.0), freqs >= 3000.0], axis=1
    ).astype(power.dtype)
    total, low, high = (power @ bands).T
    total = total + 1e-12
    low, high = low / total, high / total
    sibilance = np.clip((high - 0.25) / 0.4, 0.0, 1.0)
    vowel_open = np.clip(low / 0.6, 0.0, 1.0)

    target = np.zeros((n_frames, N_MOUTH_PARAMS), dtype=np.float32)
    target[:, OPEN] = level * (0.55 + 0.45 * vowel_open) * (1.0 - 0.7 * sibilance)
    target[:, WIDE] = level * (0.15 + 0.55 * sibilance)
    target[db < floor_db] = 0.0
    out = _attack_release(target, fps, attack, release)
    out[out < 1e-3] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


__all__ = [
    "MOUTH_PARAMS",
    "PHONEME_VISEMES",
    "VISEMES",
    "VISEME_TARGETS",
    "VisemeSegment",
    "audio_mouth_track",
    "build_timeline",
    "mouth_track",
    "openness",
]
