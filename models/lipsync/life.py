"""Making a still photo look alive: blinks, a slow sway of head and shoulders, nods on stressed syllables.

Everything is a pure function of the clock tick (and, while speaking, of the chunk's phoneme
timings), so idle frames and speech frames join without a jump and two calls for the same
tick give the same picture.

- BlinkSchedule: one blink per 4 s slot at a hashed offset, so the gaps are 2-6 s; each
  blink closes in 80 ms, holds, and opens in 120 ms.
- HeadMotion: the pose (shoulder shift, head shift, head roll), sums of slow sines with
  periods of 4-18 s and seeded phases; at most one of the head's numbers changes per tick.
- nod_track: a 1.5 px dip of the head on the vowel after each primary stress mark (ˈ).
- EyelidRig: closes the eyes of the photo by pulling the upper lid (and a little of the
  lower one) over the eyeball, a vertical warp of a small box around the eyes.
- BodyFields: backward displacement fields per pose number, feathered masks over the
  head and over head plus shoulders, so moved and unmoved parts meet without a seam.
- PhotoLife: composes the final yuv420p frames. The pose is rounded to 0.25 px steps and
  the photo warped by each distinct pose is cached, band by band (above the shoulders only
  the head's numbers matter, below the neck only the body's), so an idle tick usually
  costs a lookup. Only the boxes around the eyes and mouth are composed and warped again
  per frame (the warp moves nothing by more than a few pixels, so a box grown by that
  margin is all a changed patch can affect).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.lipsync.yuv import CropBox, paste_planes, rgb_to_yuv_planes, yuv420_planes
from models.speech import PhonemeTiming

# Pose vector layout, pixels: the shoulders' shift (below the head), the head's shift, and the
# head's roll about the base of the neck (as the shift it gives at the eyes).
BODY_X, BODY_Y, HEAD_X, HEAD_Y, HEAD_ROLL = range(5)
N_POSE = 5
_MASK64 = (1 << 64) - 1
_VOWEL_VISEMES = frozenset({"aa", "E", "ih", "oh", "ou"})
_STRESS = "ˈ"


@dataclass(frozen=True)
class LifeSettings:
    """How lively a photo avatar is. Pixel sizes are for a face 100 px wide and grow with the face (up to 2.5x)."""

    seed: int = 0
    blink_interval: float = 4.0   # s, mean gap between blinks
    blink_jitter: float = 2.0     # s, each gap is blink_interval +- up to this
    head_shift: float = 1.2       # px, peak head translation
    head_tilt: float = 0.6        # degrees, peak head roll
    breath: float = 0.5           # px, peak rise of the shoulders
    sway: float = 0.3             # px, peak sideways drift of the body
    nod_depth: float = 1.5        # px, head dip on a stressed syllable
    nod_duration: float = 0.22    # s
    step: float = 0.25            # px: poses are rounded to this, so warped frames can be reused

    def __post_init__(self) -> None:
        if not 0.0 <= self.blink_jitter < self.blink_interval - 0.3:
            raise ValueError(
                f"blink_jitter must be below blink_interval - 0.3 s (got {self.blink_jitter} and "
                f"{self.blink_interval}), or blinks would overlap"
            )
        if self.step <= 0.0:
            raise ValueError(f"step must be positive, got {self.step}")


def _unit(seed: int, k: int) -> float:
    """A hash of (seed, k) as a float in [0, 1) (splitmix64): random-looking, the same on every call."""
    z = (seed * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def _smoothstep(x: np.ndarray | float) -> np.ndarray | float:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------------------
# Timing: blinks, sway, nods.


class BlinkSchedule:
    """When the eyes close: closure(tick) in [0, 1] (1 = shut), the same for the same tick, always."""

    CLOSE, HOLD, OPEN = 0.08, 0.02, 0.12  # seconds

    def __init__(self, fps: int, settings: LifeSettings = LifeSettings()) -> None:
        self.fps = int(fps)
        self.seed = settings.seed
        self.interval = settings.blink_interval
        self.jitter = settings.blink_jitter
        self._length = math.ceil((self.CLOSE + self.HOLD + self.OPEN) * self.fps)

    def start(self, k: int) -> int:
        """The tick at which blink k begins (one blink per slot of `interval` seconds)."""
        return math.floor((k * self.interval + _unit(self.seed, k) * self.jitter) * self.fps)

    def closure(self, tick: int) -> float:
        k = math.floor(tick / (self.fps * self.interval))
        for slot in (k, k - 1):
            offset = tick - self.start(slot)
            if 0 <= offset < self._length:
                return self._profile((offset + 1) / self.fps)
        return 0.0

    def starts(self, first_tick: int, last_tick: int) -> list[int]:
        """Start ticks of the blinks beginning in [first_tick, last_tick)."""
        k0 = math.floor(first_tick / (self.fps * self.interval)) - 1
        k1 = math.floor(last_tick / (self.fps * self.interval)) + 1
        return [s for k in range(k0, k1 + 1) if first_tick <= (s := self.start(k)) < last_tick]

    def _profile(self, t: float) -> float:
        """Closure t seconds into a blink: quick to close, slower to open."""
        if t <= self.CLOSE:
            return float(_smoothstep(t / self.CLOSE))
        t -= self.CLOSE + self.HOLD
        if t <= 0.0:
            return 1.0
        return float(1.0 - _smoothstep(t / self.OPEN))


class HeadMotion:
    """The idle pose at any tick: a slow, small sway of body and head (sums of sines, seeded).

    The head rides on the body: the body's terms move the head too. The head's three numbers
    are sampled on their own phases of a 3-tick cycle (a lag of at most 80 ms on a motion of
    several seconds), so after rounding to steps at most one of them changes per tick: the
    face moves by one step at a time. That holds while no number can move a whole step in
    one cycle; a faster (larger-scale) motion is sampled on every tick instead.
    """

    STAGGER = 3
    _HEAD_LANES = (HEAD_X, HEAD_Y, HEAD_ROLL)
    # ((pose number, how much of the term it takes), ...), share of the first number's amplitude,
    # period in seconds before the seeded +-15% spread.
    _TERMS = (
        (((BODY_X, 1.0), (HEAD_X, 1.0)), 1.0, 9.1),
        (((BODY_Y, 1.0), (HEAD_Y, 0.5)), 1.0, 4.3),  # breathing lifts the shoulders more than the head
        (((HEAD_X, 1.0),), 0.65, 7.3),
        (((HEAD_X, 1.0),), 0.35, 12.9),
        (((HEAD_Y, 1.0),), 0.6, 5.7),
        (((HEAD_Y, 1.0),), 0.4, 10.3),
        (((HEAD_ROLL, 1.0),), 0.7, 8.7),
        (((HEAD_ROLL, 1.0),), 0.3, 17.3),
    )

    def __init__(self, fps: int, settings: LifeSettings, scale: float, roll_radius: float) -> None:
        self.fps = int(fps)
        own = np.zeros(N_POSE)
        own[BODY_X], own[BODY_Y] = settings.sway * scale, settings.breath * scale
        own[HEAD_X], own[HEAD_Y] = settings.head_shift * scale, 0.6 * settings.head_shift * scale
        own[HEAD_ROLL] = math.radians(settings.head_tilt) * roll_radius
        # One row per (term, pose number it moves): which number, amplitude, angular frequency, phase.
        rows = []
        for n, (moved, share, period) in enumerate(self._TERMS):
            amp = share * own[moved[0][0]]
            omega = 2.0 * math.pi / (period * (0.85 + 0.3 * _unit(settings.seed, 1000 + n)))
            phase = 2.0 * math.pi * _unit(settings.seed, 2000 + n)
            rows += [(k, amp * weight, omega, phase) for k, weight in moved]
        self._number = np.array([r[0] for r in rows])
        self._amp, self._omega, self._phase = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
        self._sum = np.eye(N_POSE)[self._number]  # (rows, N_POSE): adds each row into its number
        self.peak = self._amp @ self._sum  # the largest value each pose number reaches
        speed = (self._amp * self._omega / self.fps) @ self._sum  # px per tick, at most
        cycle = self.STAGGER if speed[list(self._HEAD_LANES)].max() * self.STAGGER < settings.step else 1
        self._lanes = np.zeros(N_POSE, dtype=np.int64)  # phase of each number in the cycle
        self._lanes[list(self._HEAD_LANES)] = np.arange(len(self._HEAD_LANES))
        self._cycle = cycle

    def pose(self, ticks: np.ndarray | Sequence[int]) -> np.ndarray:
        """(len(ticks), N_POSE) pose in pixels."""
        t = np.asarray(ticks, dtype=np.int64).reshape(-1, 1)
        lane = self._lanes[self._number]
        t = (t - (t - lane) % self._cycle) / self.fps  # (B, rows): each number on its own phase
        return (self._amp * np.sin(self._omega * t + self._phase)) @ self._sum


def stressed_vowel_times(phonemes: Sequence[PhonemeTiming]) -> list[float]:
    """Start times (s) of the vowels that follow a primary stress mark."""
    from models.lipsync.visemes import PHONEME_VISEMES

    times: list[float] = []
    armed = False
    for p in phonemes:
        for symbol in p.phoneme:
            if symbol == _STRESS:
                armed = True
            elif armed and PHONEME_VISEMES.get(symbol, ("", 0.0))[0] in _VOWEL_VISEMES:
                times.append(float(p.start))
                armed = False
    return times


def nod_track(
    phonemes: Sequence[PhonemeTiming] | None, n_frames: int, fps: int, depth: float, duration: float,
    seed: int = 0, lead: float = 0.04,
) -> np.ndarray:
    """Head dip in pixels per frame (row i at time (i + 0.5) / fps): a raised-cosine dip peaking just
    after each stressed vowel starts, kept inside the chunk so it begins and ends at 0."""
    out = np.zeros(n_frames)
    if not phonemes or n_frames <= 0 or depth <= 0.0:
        return out
    times = (np.arange(n_frames) + 0.5) / fps
    if times[-1] - times[0] < duration:
        return out
    for k, vowel in enumerate(stressed_vowel_times(phonemes)):
        # Whole dips only: the first and last frames of a chunk are level.
        start = min(max(vowel + 0.05 - lead - 0.5 * duration, times[0]), times[-1] - duration)
        phase = np.clip((times - start) / duration, 0.0, 1.0)
        dip = depth * (0.75 + 0.25 * _unit(seed, 3000 + k)) * 0.5 * (1.0 - np.cos(2.0 * np.pi * phase))
        np.maximum(out, dip, out=out)
    return out


# ---------------------------------------------------------------------------------------
# Geometry: eyelids and the motion fields.


def _lid_curve(xs: np.ndarray, pts: np.ndarray) -> np.ndarray:
    order = np.argsort(pts[:, 0], kind="stable")
    return np.interp(xs, pts[order, 0], pts[order, 1])


class EyelidRig:
    """Closes the photo's eyes: a vertical warp of a box around both eyes (numpy, cheap per closure).

    At closure c the upper lid edge comes down by c * 75% of the eye's opening and the lower
    one up by the rest; the lid skin between the brow and the lid edge stretches to follow,
    the lower lid's skin likewise, and the eyeball between the edges stays where it is (the
    lids slide over it). The mapping is the identity on the box border and at the corners.
    """

    UPPER_SHARE = 0.75
    SUBSAMPLES = 3  # vertical samples per pixel: antialiases the moving lid edge

    def __init__(self, rgb: np.ndarray, landmarks: np.ndarray) -> None:
        p = np.asarray(landmarks, dtype=np.float64)
        h_img, w_img = rgb.shape[:2]
        eyes = []
        for corners, upper, lower, brow in (
            ((36, 39), (36, 37, 38, 39), (36, 41, 40, 39), range(17, 22)),
            ((42, 45), (42, 43, 44, 45), (42, 47, 46, 45), range(22, 27)),
        ):
            width = abs(p[corners[1], 0] - p[corners[0], 0])
            opening = max(0.5 * (p[lower[1], 1] + p[lower[2], 1] - p[upper[1], 1] - p[upper[2], 1]), 1.0)
            lid_top = min(p[upper[1], 1], p[upper[2], 1])
            brow_gap = max(lid_top - max(p[i, 1] for i in brow), 2.0)
            band_up = float(np.clip(0.7 * brow_gap, 1.2 * opening, 0.5 * width))
            band_low = float(max(0.8 * opening, 0.2 * width))
            eyes.append((p[list(upper)], p[list(lower)], band_up, band_low))
        if min(abs(p[39, 0] - p[36, 0]), abs(p[45, 0] - p[42, 0])) < 4.0:
            raise ValueError("the eyes are under 4 px wide in landmarks 36-47; use a larger photo to get blinks")
        x0 = min(e[0][:, 0].min() for e in eyes) - 2
        x1 = max(e[0][:, 0].max() for e in eyes) + 2
        y0 = min(e[0][:, 1].min() - e[2] for e in eyes) - 2
        y1 = max(e[1][:, 1].max() + e[3] for e in eyes) + 2
        self.box = box = CropBox.around(x0, y0, x1, y1, w_img, h_img)
        self.rgb = np.ascontiguousarray(rgb[box.y0 : box.y1, box.x0 : box.x1]).astype(np.float32)
        xs = np.arange(box.width, dtype=np.float64) + box.x0
        self._upper = np.zeros(box.width)
        self._opening = np.zeros(box.width)
        self._band_up = np.ones(box.width)
        self._band_low = np.ones(box.width)
        for upper, lower, band_up, band_low in eyes:
            inside = (xs > upper[0, 0]) & (xs < upper[-1, 0])
            top = _lid_curve(xs, upper)
            bottom = _lid_curve(xs, lower)
            self._upper = np.where(inside, top - box.y0, self._upper)
            self._opening = np.where(inside, np.maximum(bottom - top, 0.0), self._opening)
            self._band_up = np.where(inside, band_up, self._band_up)
            self._band_low = np.where(inside, band_low, self._band_low)

    def source_rows(self, closure: float) -> np.ndarray:
        """(height * SUBSAMPLES, width) row in the box that each output sub-row shows at this closure."""
        c = float(np.clip(closure, 0.0, 1.0))
        n = self.SUBSAMPLES
        y = (np.arange(self.box.height * n, dtype=np.float64) + 0.5) / n - 0.5
        y = y[:, None]
        upper, opening = self._upper[None, :], self._opening[None, :]
        band_up, band_low = self._band_up[None, :], self._band_low[None, :]
        lower = upper + opening
        new_upper = upper + c * self.UPPER_SHARE * opening
        new_lower = lower - c * (1.0 - self.UPPER_SHARE) * opening
        top, bottom = upper - band_up, lower + band_low
        src = np.broadcast_to(y, (y.shape[0], upper.shape[1])).copy()
        lid = (y >= top) & (y < new_upper)
        src = np.where(lid, top + (y - top) * band_up / (band_up + (new_upper - upper)), src)
        low = (y >= new_lower) & (y <= bottom)
        src = np.where(low, bottom - (bottom - y) * band_low / (band_low + (lower - new_lower)), src)
        return np.clip(src, 0.0, self.box.height - 1.0)

    def patch_rgb(self, closure: float) -> np.ndarray:
        """The eye box with the eyes closed by `closure`, (h, w, 3) float32 RGB."""
        src = self.source_rows(closure)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, self.box.height - 1)
        frac = (src - i0)[..., None]
        cols = np.arange(self.box.width)[None, :]
        sampled = self.rgb[i0, cols] * (1.0 - frac) + self.rgb[i1, cols] * frac
        n = self.SUBSAMPLES
        return sampled.reshape(self.box.height, n, self.box.width, 3).mean(axis=1)


class BodyFields:
    """Where the head and the body are, and the backward displacement each pose number gives each pixel.

    Two feathered masks: the head (an ellipse over face and hair, fading down the neck) and
    the body (head, neck, shoulders and chest, soft-edged, fading out down the chest). The
    head shift and roll (about the base of the neck) move the head mask; the body shift moves
    the rest of the body mask, the neck taking a blend of both. Background beyond the
    feathering never moves.
    """

    def __init__(self, landmarks: np.ndarray, width: int, height: int) -> None:
        p = np.asarray(landmarks, dtype=np.float64)
        self.width, self.height = int(width), int(height)
        self.face_width = fw = float(np.linalg.norm(p[16] - p[0]))
        chin = float(p[8, 1])
        eyes_y = float(p[36:48, 1].mean())
        self.centre_x = cx = float(0.5 * (p[0, 0] + p[16, 0]))
        top = eyes_y - 0.95 * fw  # the top of the hair, roughly
        # Full weight from the hair down past the chin; the neck takes the feathering.
        self._head = (cx, 0.5 * (top + chin) + 0.05 * fw, 0.78 * fw, 0.5 * (chin - top) + 0.12 * fw)
        self._head_feather = 0.5  # of the ellipse radius
        self.pivot = (cx, chin + 0.3 * fw)  # the base of the neck
        # The roll is measured by the shift it gives at the eyes, where it shows most.
        self.roll_radius = float(self.pivot[1] - eyes_y)
        self._body_x = (cx, 1.1 * fw, 0.5 * fw)        # centre, half-width at full weight, feather
        self._body_top = (chin + 0.3 * fw, 0.5 * fw)     # the shoulders: full weight below, fading in above
        self._body_bottom = (chin + 1.2 * fw, 1.2 * fw)  # the chest moves less than the shoulders
        head_x = self._head[2] * (1.0 + self._head_feather)
        head_y = self._head[3] * (1.0 + self._head_feather)
        x0 = min(cx - self._body_x[1] - self._body_x[2], cx - head_x)
        x1 = max(cx + self._body_x[1] + self._body_x[2], cx + head_x)
        y0 = min(self._head[1] - head_y, self._body_top[0] - self._body_top[1])
        y1 = max(sum(self._body_bottom), self._head[1] + head_y)
        self.region = CropBox.around(x0, y0, x1, y1, width, height)

    def head_mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        cx, cy, rx, ry = self._head
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return 1.0 - _smoothstep((rho - 1.0) / self._head_feather)

    def body_mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Everything that rides on the body: the head, the neck, the shoulders and chest."""
        cx, half, feather = self._body_x
        top, fade = self._body_top
        across = 1.0 - _smoothstep((np.abs(x - cx) - half) / feather)
        down = _smoothstep((y - (top - fade)) / fade)
        chest, fade_out = self._body_bottom
        down = down * (1.0 - _smoothstep((y - chest) / fade_out))
        return np.maximum(across * down, self.head_mask(x, y))

    def bands(self) -> list[tuple[CropBox, tuple[int, ...]]]:
        """The warped region cut into row bands, each with the pose numbers it depends on: above the
        shoulders only the head's, below the neck only the body's, between them all five."""
        r = self.region
        x, y = np.meshgrid(np.arange(r.x0, r.x1, dtype=np.float64), np.arange(r.y0, r.y1, dtype=np.float64))
        head = self.head_mask(x, y)
        torso = self.body_mask(x, y) - head
        head_rows = np.flatnonzero((head > 0).any(axis=1)) + r.y0
        torso_rows = np.flatnonzero((torso > 0).any(axis=1)) + r.y0
        top = int(torso_rows[0]) // 2 * 2 if len(torso_rows) else r.y1
        bottom = -(-(int(head_rows[-1]) + 1) // 2) * 2 if len(head_rows) else r.y0
        top, bottom = max(r.y0, min(top, r.y1)), min(r.y1, max(bottom, r.y0))
        if bottom < top:
            top = bottom = max(r.y0, min(top, r.y1))
        head_ids, body_ids = (HEAD_X, HEAD_Y, HEAD_ROLL), (BODY_X, BODY_Y)
        out = []
        for y0, y1, ids in ((r.y0, top, head_ids), (top, bottom, head_ids + body_ids), (bottom, r.y1, body_ids)):
            if y1 <= y0:
                continue
            moving = ((head > 0) | (torso > 0))[y0 - r.y0 : y1 - r.y0]
            cols = np.flatnonzero(moving.any(axis=0))
            if len(cols):
                out.append((CropBox.around(cols[0] + r.x0, y0, cols[-1] + 1 + r.x0, y1, self.width, self.height),
                            tuple(sorted(ids))))
        return out

    def basis(self, box: CropBox, chroma: bool = False) -> np.ndarray:
        """(N_POSE, 2, h, w) float32 backward displacements (x, y) per unit pose over `box`,
        at luma pixels or (chroma=True) at the centres of the chroma samples, in that plane's pixels."""
        if chroma:
            xs = 2.0 * np.arange(box.x0 // 2, box.x1 // 2) + 0.5
            ys = 2.0 * np.arange(box.y0 // 2, box.y1 // 2) + 0.5
        else:
            xs = np.arange(box.x0, box.x1, dtype=np.float64)
            ys = np.arange(box.y0, box.y1, dtype=np.float64)
        x, y = np.meshgrid(xs, ys)
        head, body = self.head_mask(x, y), self.body_mask(x, y)
        px, py = self.pivot
        out = np.zeros((N_POSE, 2) + x.shape)
        # Backward: a pixel shows what lies against the motion.
        torso = body - head  # the head's own numbers already carry what the body gives it
        out[BODY_X, 0] = -torso
        out[BODY_Y, 1] = -torso
        out[HEAD_X, 0] = -head
        out[HEAD_Y, 1] = -head
        out[HEAD_ROLL, 0] = head * (y - py) / self.roll_radius
        out[HEAD_ROLL, 1] = -head * (x - px) / self.roll_radius
        if chroma:
            out *= 0.5
        return out.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Composition of the frames.


class _Slot:
    """A box that changes per frame (eyes, mouth): composed over `source`, warped into `out`.

    For luma and chroma: the sampling grid of the unmoved box, and the grid offsets per unit
    pose, both in grid_sample's normalised coordinates of the source box and laid out as
    grid_sample wants them (h, w, 2) flattened, so a batch of grids is one addmm.
    """

    def __init__(self, patches: tuple[str, ...], out: CropBox, source: CropBox, fields: BodyFields,
                 device: torch.device) -> None:
        self.patches, self.out, self.source = patches, out, source
        at = out.within(source)
        self.grid_y, self.basis_y = self._grids(fields.basis(out), at.x0, at.y0, source.width, source.height, device)
        self.grid_c, self.basis_c = self._grids(
            fields.basis(out, chroma=True), at.x0 // 2, at.y0 // 2, source.width // 2, source.height // 2, device
        )

    @staticmethod
    def _grids(basis: np.ndarray, x0: int, y0: int, src_w: int, src_h: int, device: torch.device):
        h, w = basis.shape[-2:]
        norm = np.array([2.0 / (src_w - 1), 2.0 / (src_h - 1)])
        ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
        grid = np.stack([xs, ys], axis=-1) * norm - 1.0
        offsets = basis.transpose(0, 2, 3, 1) * norm  # (N_POSE, h, w, 2)
        as_tensor = lambda a: torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32)).to(device)  # noqa: E731
        return as_tensor(grid[None]), as_tensor(offsets)


class PhotoLife:
    """Composes the living frames of one photo: sway and blinks on every tick, nods and a mouth while speaking."""

    CACHE = 32  # warped photos kept (one per recent pose; several sessions share them)

    def __init__(
        self,
        rgb: np.ndarray,
        landmarks: np.ndarray,
        base: np.ndarray,
        mouth_box: CropBox,
        fps: int,
        settings: LifeSettings,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.fps = int(fps)
        self.device = device
        self.height, self.width = rgb.shape[:2]
        self.base = base
        self.fields = BodyFields(landmarks, self.width, self.height)
        self.scale = float(np.clip(self.fields.face_width / 100.0, 1.0, 2.5))
        self.motion = HeadMotion(fps, settings, self.scale, self.fields.roll_radius)
        self.blinks = BlinkSchedule(fps, settings)
        self.eyes = EyelidRig(rgb, landmarks)
        self.nod_depth = settings.nod_depth * self.scale

        y, u, v = (torch.from_numpy(p.copy()) for p in yuv420_planes(base))
        self._planes = (y.to(device), u.to(device), v.to(device))
        self._y = self._planes[0].float()[None, None]
        self._uv = torch.stack(self._planes[1:]).float()[None]
        whole = CropBox(0, 0, self.width, self.height)
        self._parts = [(self._slot((), box, whole), ids) for box, ids in self.fields.bands()]
        self._slots = self._patch_slots({"eyes": self.eyes.box, "mouth": mouth_box})
        self._boxes = {"eyes": self.eyes.box, "mouth": mouth_box}
        self._lock = threading.Lock()
        self._warped: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        # Per band, its warped planes by the pose numbers it depends on (a head step re-warps
        # only the bands above the shoulders).
        self._band_planes: list[OrderedDict] = [OrderedDict() for _ in self._parts]
        self._eye_planes: dict[int, tuple[torch.Tensor, ...]] = {}

    # -- public ---------------------------------------------------------------------------

    def poses(self, ticks: Sequence[int], nods: np.ndarray | None = None) -> np.ndarray:
        """(B, N_POSE) int: the pose of each tick in steps of `settings.step` pixels."""
        pose = self.motion.pose(ticks)
        if nods is not None:
            pose[:, HEAD_Y] += nods
        return np.rint(pose / self.settings.step).astype(np.int64)

    def nods(self, phonemes: Sequence[PhonemeTiming] | None, n_frames: int) -> np.ndarray:
        """The head dip per frame of a speech chunk, pixels."""
        return nod_track(phonemes, n_frames, self.fps, self.nod_depth, self.settings.nod_duration, self.settings.seed)

    def frames(
        self,
        ticks: Sequence[int],
        mouth: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        nods: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Packed yuv420p frames for `ticks`; `mouth` holds the mouth box's Y, U, V planes per frame
        (B, h, w) and (B, h/2, w/2) uint8 (None: the photo's mouth). A frame with nothing changed
        but the pose is the cached, read-only warped photo itself."""
        ticks = list(ticks)
        poses = self.poses(ticks, nods)
        closures = [self.blinks.closure(t) for t in ticks]
        frames: list[np.ndarray] = []
        jobs: dict[int, list[int]] = {}
        for b, (pose, closure) in enumerate(zip(poses, closures)):
            warped = self.warped_photo(pose)
            dirty = [i for i, s in enumerate(self._slots)
                     if ("mouth" in s.patches and mouth is not None) or ("eyes" in s.patches and closure > 0.0)]
            if not dirty:
                frames.append(warped)
                continue
            frames.append(warped.copy())
            for i in dirty:
                jobs.setdefault(i, []).append(b)
        for i, batch in jobs.items():
            self._compose_slot(self._slots[i], batch, frames, poses, closures, mouth)
        return frames

    def warped_photo(self, pose: np.ndarray) -> np.ndarray:
        """The photo moved by a (quantised) pose, cached (read-only)."""
        key = tuple(int(q) for q in pose)
        with self._lock:
            hit = self._warped.get(key)
            if hit is not None:
                self._warped.move_to_end(key)
                return hit
        frame = self.base
        if any(key):
            frame = self.base.copy()
            for (slot, ids), cache in zip(self._parts, self._band_planes):
                sub = tuple(key[i] for i in ids)
                if any(sub):
                    paste_planes(frame, slot.out, *self._band(slot, cache, sub, key))
            frame.setflags(write=False)
        with self._lock:
            self._warped[key] = frame
            while len(self._warped) > self.CACHE:
                self._warped.popitem(last=False)
        return frame

    def _band(self, slot: _Slot, cache: OrderedDict, sub: tuple[int, ...], key: tuple[int, ...]) -> tuple:
        """Y, U, V planes of one band warped by the pose `key`, cached by the numbers it depends on."""
        with self._lock:
            planes = cache.get(sub)
            if planes is not None:
                cache.move_to_end(sub)
                return planes
        with torch.inference_mode():
            y, u, v = self._warp(slot, self._y, self._uv, torch.tensor([key], dtype=torch.float32))
        planes = (y[0].cpu().numpy(), u[0].cpu().numpy(), v[0].cpu().numpy())
        with self._lock:
            cache[sub] = planes
            while len(cache) > self.CACHE:
                cache.popitem(last=False)
        return planes

    # -- internals ------------------------------------------------------------------------

    def _slot(self, patches: tuple[str, ...], out: CropBox, source: CropBox) -> _Slot:
        return _Slot(patches, out, source, self.fields, self.device)

    def margin(self, box: CropBox) -> int:
        """How far (even, px) a change inside `box` can spread through the warp: the largest displacement
        near the box, plus one pixel for the bilinear taps."""
        near = box.grown(24, self.width, self.height)
        peak = self.motion.peak + 0.5 * self.settings.step  # + rounding to the step
        peak[HEAD_Y] += self.nod_depth
        extent = np.einsum("k,kchw->chw", peak, np.abs(self.fields.basis(near)))  # per axis, at most
        reach = float(np.sqrt((extent**2).sum(axis=0)).max())
        return 2 * math.ceil((reach + 1.0) / 2.0)

    def _patch_slots(self, boxes: dict[str, CropBox]) -> list[_Slot]:
        """One slot per patch (output: the patch grown by its margin; source: by twice that), or one
        slot for all patches when one's source would reach into another or their outputs would meet."""
        w, h = self.width, self.height
        names = list(boxes)
        m = {n: self.margin(boxes[n]) for n in names}
        touch = any(
            boxes[a].grown(2 * m[a], w, h).overlaps(boxes[b])
            or boxes[a].grown(m[a], w, h).overlaps(boxes[b].grown(m[b], w, h))
            for a in names for b in names if a != b
        )
        if touch:
            union = boxes[names[0]]
            for n in names[1:]:
                union = union.union(boxes[n])
            most = max(m.values())
            return [self._slot(tuple(names), union.grown(most, w, h), union.grown(2 * most, w, h))]
        return [self._slot((n,), boxes[n].grown(m[n], w, h), boxes[n].grown(2 * m[n], w, h)) for n in names]

    def _eye_yuv(self, closure: float) -> tuple[torch.Tensor, ...]:
        key = int(round(closure * 64))
        planes = self._eye_planes.get(key)
        if planes is None:
            rgb = torch.from_numpy(self.eyes.patch_rgb(key / 64.0)).permute(2, 0, 1)[None]
            planes = tuple(p[0].to(self.device) for p in rgb_to_yuv_planes(rgb))
            self._eye_planes[key] = planes  # at most 65 tiny entries
        return planes

    def _compose_slot(
        self, slot: _Slot, batch: list[int], frames: list[np.ndarray], poses: np.ndarray,
        closures: list[float], mouth: tuple[torch.Tensor, ...] | None,
    ) -> None:
        src = slot.source
        ys, uvs = [], []
        for b in batch:
            planes = [p[box].clone() for p, box in zip(self._planes, (src.luma(), src.chroma(), src.chroma()))]
            if "eyes" in slot.patches and closures[b] > 0.0:
                self._paste(planes, self._boxes["eyes"].within(src), self._eye_yuv(closures[b]))
            if "mouth" in slot.patches and mouth is not None:
                self._paste(planes, self._boxes["mouth"].within(src), tuple(m[b] for m in mouth))
            ys.append(planes[0])
            uvs.append(torch.stack(planes[1:]))
        y_src = torch.stack(ys)[:, None].float()
        uv_src = torch.stack(uvs).float()
        pose = torch.from_numpy(poses[batch].astype(np.float32)).to(self.device)
        with torch.inference_mode():
            if not poses[batch].any():
                out = slot.out.within(src)
                y = y_src[:, 0, out.y0 : out.y1, out.x0 : out.x1].to(torch.uint8)
                c = out.chroma()
                u, v = uv_src[:, 0, c[0], c[1]].to(torch.uint8), uv_src[:, 1, c[0], c[1]].to(torch.uint8)
            else:
                y, u, v = self._warp(slot, y_src, uv_src, pose)
        y, u, v = y.cpu().numpy(), u.cpu().numpy(), v.cpu().numpy()
        for k, b in enumerate(batch):
            paste_planes(frames[b], slot.out, y[k], u[k], v[k])

    @staticmethod
    def _paste(planes: list[torch.Tensor], box: CropBox, yuv: tuple[torch.Tensor, ...]) -> None:
        planes[0][box.luma()] = yuv[0]
        planes[1][box.chroma()] = yuv[1]
        planes[2][box.chroma()] = yuv[2]

    def _warp(
        self, slot: _Slot, y_src: torch.Tensor, uv_src: torch.Tensor, pose: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Warp source planes (B or 1, 1, H, W) and (B or 1, 2, H/2, W/2) covering slot.source by the
        poses (B, N_POSE) in steps; uint8 planes over slot.out."""
        b = pose.shape[0]
        pose = pose.to(self.device) * self.settings.step
        h, w = slot.out.height, slot.out.width
        grid_y = torch.addmm(slot.grid_y, pose, slot.basis_y).view(b, h, w, 2)
        grid_c = torch.addmm(slot.grid_c, pose, slot.basis_c).view(b, h // 2, w // 2, 2)
        if y_src.shape[0] != b:
            y_src, uv_src = y_src.expand(b, -1, -1, -1), uv_src.expand(b, -1, -1, -1)
        y = F.grid_sample(y_src, grid_y, mode="bilinear", padding_mode="border", align_corners=True)
        uv = F.grid_sample(uv_src, grid_c, mode="bilinear", padding_mode="border", align_corners=True)
        # Bilinear samples of 0..255 stay in range: +0.5 and truncation round.
        y = y[:, 0].add_(0.5).to(torch.uint8)
        uv = uv.add_(0.5).to(torch.uint8)
        return y, uv[:, 0], uv[:, 1]
