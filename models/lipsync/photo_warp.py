"""The default lip-sync renderer: warps the mouth of one photo and paints the mouth interior.

Per avatar (once): a crop around the mouth and jaw, and for each mouth parameter two smooth
backward displacement fields over that crop, one for everything above the lips' parting
line (upper lip, and the upper teeth when the photo shows them) and one for everything
below it (lower lip, chin, jaw). They come from landmark displacements interpolated with a
thin-plate spline that is pinned to zero at the nose and along the crop border, so the
warp never leaves a seam.

Per frame (batched): both fields are the weighted sums of their bases; each pixel takes
the field whose source sample lands on its own side of the parting line (where both do,
the one reaching deeper into its lip, which is how pressed lips meet; where neither does,
the pixel is inside the open mouth and gets painted). One `grid_sample` warps the crop,
the interior is painted over it, and the crop is converted to yuv420p. The photo then comes
alive (models/lipsync/life.py): it blinks, sways slowly and nods on stressed syllables, and
the mouth crop is composed into that moving frame.

MouthWarp is the torch half of the mouth and also serves video avatars
(models/lipsync/video_warp.py), whose frames each map onto the reference frame's rig.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.avatar.photo import PhotoAvatar
from models.lipsync.life import LifeSettings, PhotoLife
from models.lipsync.mouth import BITE, N_MOUTH_PARAMS, OPEN, PRESS, ROUND, WIDE
from models.lipsync.mouth_interior import InteriorColours, MouthInteriorPainter, photo_teeth_colour
from models.lipsync.renderer import FrameSource, LipSyncRenderer
from models.lipsync.yuv import CropBox, paste_planes, rgb_to_yuv420, rgb_to_yuv_planes, yuv420_to_rgb
from models.speech import SpeechChunk

__all__ = [
    "CropBox", "MouthRig", "MouthWarp", "PhotoWarpFrames", "PhotoWarpRenderer", "mouth_track_for",
    "rgb_to_yuv420", "rgb_to_yuv_planes", "yuv420_to_rgb",  # the last three re-exported from yuv.py
]

# Inner-lip gap at open=1 as a share of the inner mouth width (dlib's 62-66 over 60-64).
OPEN_RATIO = 0.46
OPEN_GAMMA = 0.8  # open -> jaw travel curve (see MouthWarp.render_rgb)
RENDER_BATCH = 8
CONTACT_SHADE = 0.4  # darkening of the lower lip's edge where the lips press together
SEAM = 1.0  # half-width in pixels of the photo's teeth/lower-lip edge row


# ---------------------------------------------------------------------------------------
# Per-avatar rig: crop, basis fields, parting-line tables, interior colours.


class MouthRig:
    """Everything the renderer precomputes from one photo and its 68 landmarks (numpy, once).

    basis: (N_MOUTH_PARAMS, 4, h, w) backward displacements in pixels (upper x, upper y,
    lower x, lower y): a pixel at p shows the photo at p + field.
    tables: (5, w) per crop column: the upper side's lower boundary, the lower side's upper
    boundary, the upper lip's inner edge, how far painted upper teeth reach below the
    upper side's boundary, and the half-width of the photo's own teeth/lip edge row.
    Outside the mouth the two boundaries part (upper below lower), so cheeks are never
    mistaken for an open mouth.
    shows_teeth: the photo's lips part over visible teeth; those teeth then move with the
    upper lip (as real upper teeth do) and only their hidden biting edge is painted.
    """

    def __init__(self, rgb: np.ndarray, landmarks: np.ndarray) -> None:
        p = np.asarray(landmarks, dtype=np.float64)
        width = float(np.linalg.norm(p[64] - p[60]))
        if width < 10.0 or not p[60, 0] < p[64, 0]:
            raise ValueError(
                f"the mouth is {width:.0f} px wide in landmarks 60-64; the photo renderer needs a frontal "
                "face with a mouth at least 10 px wide (use a larger photo)"
            )
        self.mouth_width = width
        self.centre_x = 0.5 * (p[60, 0] + p[64, 0])
        self._p = p
        self.crop = self._crop_box(p, rgb.shape[0], rgb.shape[1])
        c = self.crop
        self.crop_rgb = np.ascontiguousarray(rgb[c.y0 : c.y0 + c.height, c.x0 : c.x0 + c.width])
        self.local = p - np.array([c.x0, c.y0], dtype=np.float64)
        xs = np.arange(c.width, dtype=np.float64)
        self._edges(xs)
        self.tables = np.stack(
            [self.upper_bound, self.lower_bound, self.upper_lip, self.teeth_reach, self.seam]
        ).astype(np.float32)
        self.basis = self._basis().astype(np.float32)
        self.colours = InteriorColours.from_photo(self._lip_pixels(rgb), self._teeth_pixels())

    # -- geometry -------------------------------------------------------------------------

    def _open_drop(self, p: np.ndarray) -> float:
        """How far the lower lip centre drops at open=1 (to reach OPEN_RATIO with the photo's own gap)."""
        # dlib's own gap, not the refined edges: OPEN_RATIO is what dlib re-detects on the frames.
        gap = max(0.0, p[66, 1] - p[62, 1])
        return max(0.12 * self.mouth_width, OPEN_RATIO * self.mouth_width - gap - 0.03 * self.mouth_width)

    def _crop_box(self, p: np.ndarray, img_h: int, img_w: int) -> CropBox:
        w = self.mouth_width
        jaw = p[3:14]
        x0 = math.floor(jaw[:, 0].min() - 0.25 * w)
        x1 = math.ceil(jaw[:, 0].max() + 0.25 * w)
        y0 = math.floor(p[31:36, 1].min() - 0.05 * w)
        y1 = math.ceil(p[5:12, 1].max() + 1.3 * self._open_drop(p) + 0.65 * w)
        x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
        x1, y1 = min(img_w, x1 + x1 % 2), min(img_h, y1 + y1 % 2)
        if x1 - x0 < 16 or y1 - y0 < 16:
            raise ValueError("the mouth region of the avatar lies outside the image; use a photo with the whole face")
        return CropBox(x0, y0, x1 - x0, y1 - y0)

    def _edges(self, xs: np.ndarray) -> None:
        """Per-column parting line, lip edges and teeth reach, in crop coordinates."""
        q = self.local
        w = self.mouth_width
        upper_inner = _interp_curve(xs, q[[60, 61, 62, 63, 64]])
        lower_inner = _interp_curve(xs, q[[60, 67, 66, 65, 64]])
        inside = (xs >= q[60, 0]) & (xs <= q[64, 0])
        upper_inner, lower_inner = _snap_to_teeth(self.crop_rgb, xs, inside, upper_inner, lower_inner)
        lower_inner = np.maximum(lower_inner, upper_inner)
        # Beyond the inner corners the parting line runs to the outer corners, then level.
        left = np.interp(xs, [q[48, 0], q[60, 0]], [q[48, 1], q[60, 1]])
        right = np.interp(xs, [q[64, 0], q[54, 0]], [q[64, 1], q[54, 1]])
        line = np.where(xs < q[60, 0], left, right)
        beyond = np.maximum.reduce([q[48, 0] - xs, xs - q[54, 0], np.zeros_like(xs)])
        between = np.maximum.reduce([q[60, 0] - xs, xs - q[64, 0], np.zeros_like(xs)])
        margin = 0.6 * beyond + 0.15 * np.minimum(between, 3.0)
        # Where teeth show, the photo's teeth/lip edge row is a blend of both; it belongs to
        # neither side, or an opened mouth would show a pink rim under the teeth and a white
        # one on the lower lip. At rest that seam is still shown (gaps narrower than it are
        # not painted).
        seam = np.where(inside, SEAM * np.clip(0.5 * (lower_inner - upper_inner), 0.0, 1.0), 0.0)
        self.seam = seam
        self.upper_bound = np.where(inside, lower_inner - seam, line + margin)
        self.lower_bound = np.where(inside, lower_inner + seam, line - margin)
        self.upper_lip = np.where(inside, upper_inner, line)
        self.gap = np.where(inside, lower_inner - upper_inner, 0.0)
        self.upper_inner, self.lower_inner = upper_inner, lower_inner
        self.shows_teeth = bool(self.gap.max() >= 0.08 * w and photo_teeth_colour(self._teeth_pixels()) is not None)
        t = (xs + self.crop.x0 - self.centre_x) / (0.5 * w)
        across = np.clip(1.0 - t * t, 0.0, 1.0)
        if self.shows_teeth:
            # The photo shows its teeth: keep them, and only paint their hidden biting edge.
            reach = SEAM + 0.02 * w * np.sqrt(across)
        else:
            reach = np.maximum(0.0, 0.15 * w * across**0.25 - self.gap)
        self.teeth_reach = np.where(inside, reach, 0.0)

    def _lip_pixels(self, rgb: np.ndarray) -> np.ndarray:
        """The lower lip's pixels between its inner and outer centre landmarks, (N, 3)."""
        p = np.rint(self._p).astype(int)
        y_a, y_b = sorted((p[66, 1], p[57, 1]))
        return rgb[y_a + 1 : max(y_a + 2, y_b), p[67, 0] : p[65, 0] + 1].reshape(-1, 3)

    def _teeth_pixels(self) -> np.ndarray:
        """The photo's pixels between the inner lips, away from the corners, (N, 3) (maybe none)."""
        c = self.crop
        rows = []
        for i in range(c.width):
            if abs(i + c.x0 - self.centre_x) < 0.3 * self.mouth_width:
                top, bottom = int(math.ceil(self.upper_inner[i])) + 1, int(math.floor(self.lower_inner[i]))
                rows.append(self.crop_rgb[top:bottom, i])
        return np.concatenate(rows).reshape(-1, 3) if rows else np.zeros((0, 3), np.uint8)

    # -- basis fields ---------------------------------------------------------------------

    def _basis(self) -> np.ndarray:
        c = self.crop
        gy, gx = np.mgrid[0 : c.height, 0 : c.width].astype(np.float64)
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
        window = _border_window(c.width, c.height, 0.12 * self.mouth_width).ravel()
        agree = self._agreement_weight(gx, gy).ravel()
        anchors = self._anchors()
        out = np.zeros((N_MOUTH_PARAMS, 4, c.height, c.width))
        for k, (upper, lower) in enumerate(self._articulations()):
            fields = []
            for controls in (upper, lower):
                src = np.array([s for s, _ in controls] + list(anchors))
                disp = np.array([d for _, d in controls] + [(0.0, 0.0)] * len(anchors))
                fields.append(_tps(src + disp, -disp, grid, scale=self.mouth_width))
            up, lo = fields
            mid = 0.5 * (up + lo)
            # Beside the mouth both sides must move alike on the parting line, or the cheek would tear.
            up = up + (mid - up) * agree[:, None]
            lo = lo + (mid - lo) * agree[:, None]
            out[k, 0:2] = (up * window[:, None]).T.reshape(2, c.height, c.width)
            out[k, 2:4] = (lo * window[:, None]).T.reshape(2, c.height, c.width)
        return out

    def _agreement_weight(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        q, w = self.local, self.mouth_width
        line = np.interp(gx[0], [q[48, 0], q[60, 0], q[64, 0], q[54, 0]], [q[48, 1], q[60, 1], q[64, 1], q[54, 1]])
        beyond = np.maximum.reduce([q[48, 0] - gx[0], gx[0] - q[54, 0], np.zeros_like(gx[0])])
        ramp = np.clip(beyond / (0.15 * w), 0.0, 1.0)
        sigma = 0.08 * w + 0.5 * beyond
        return ramp[None, :] * np.exp(-(((gy - line[None, :]) / sigma[None, :]) ** 2))

    def _anchors(self) -> list[tuple[float, float]]:
        """Points that never move: the nose bottom and the crop border."""
        c, q = self.crop, self.local
        step = max(4.0, 0.15 * self.mouth_width)
        pts = [tuple(q[i]) for i in range(31, 36)]
        for x in np.linspace(0, c.width - 1, max(2, int(c.width / step)) + 1):
            pts += [(x, 0.0), (x, c.height - 1.0)]
        for y in np.linspace(0, c.height - 1, max(2, int(c.height / step)) + 1)[1:-1]:
            pts += [(0.0, y), (c.width - 1.0, y)]
        return pts

    def _articulations(self) -> list[tuple[list, list]]:
        """Forward landmark displacements per mouth parameter: (upper controls, lower controls).

        Each control is (source point, displacement), crop coordinates, pixels.
        """
        q, w = self.local, self.mouth_width
        cx = self.centre_x - self.crop.x0
        hw = 0.5 * w

        def t_of(x: float) -> float:
            return (x - cx) / hw

        def prof(x: float) -> float:
            return math.sqrt(max(0.0, 1.0 - t_of(x) ** 2))

        def gap_at(x: float) -> float:
            """From the upper lip's edge to where the lower side starts (photo's gap plus seam)."""
            return float(np.interp(x, np.arange(len(self.gap)), self.gap + 2.0 * self.seam))

        def thick_upper(i: int) -> float:  # upper lip thickness under outer point i
            return max(1.0, float(np.interp(q[i, 0], np.arange(len(self.upper_inner)), self.upper_inner)) - q[i, 1])

        def thick_lower(i: int) -> float:
            return max(1.0, q[i, 1] - float(np.interp(q[i, 0], np.arange(len(self.lower_inner)), self.lower_inner)))

        # Extra points: the parting line beyond the corners (shared), cheeks, chin crease.
        line_pts = []
        for side, corner in ((-1, q[48]), (1, q[54])):
            for f in (0.2, 0.45):
                line_pts.append((side, f, corner + np.array([side * f * w, 0.0])))
        cheeks_above = [(s, q[c] + np.array([s * 0.12 * w, -0.3 * w])) for s, c in ((-1, 48), (1, 54))]
        cheeks_below = [(s, q[c] + np.array([s * 0.08 * w, 0.35 * w])) for s, c in ((-1, 48), (1, 54))]
        crease = [(0.5 * (q[a] + q[b])) for a, b in ((58, 7), (57, 8), (56, 9))]
        upper_ids = [49, 50, 51, 52, 53, 61, 62, 63]
        lower_ids = [55, 56, 57, 58, 59, 65, 66, 67]
        corner_ids = [48, 54, 60, 64]
        below = {61: 67, 62: 66, 63: 65}

        def assemble(up: dict, lo: dict, corner, line, above, under, jaw, chin) -> tuple[list, list]:
            upper = [(q[i], up[i]) for i in upper_ids]
            lower = [(q[i], lo[i]) for i in lower_ids]
            corners = [(q[i], corner(i)) for i in corner_ids]
            lines = [(pt, line(side, f)) for side, f, pt in line_pts]
            # Each side continues its inner-edge motion across the gap, so distances measured
            # inside the open mouth are true pixel distances.
            upper_cont = [(q[below[i]], up[i]) for i in (61, 62, 63)]
            lower_cont = [(q[i], lo[below[i]]) for i in (61, 62, 63)]
            above_c = [(pt, above(side)) for side, pt in cheeks_above]
            under_c = [(pt, under(side)) for side, pt in cheeks_below]
            jaw_c = [(q[i], jaw(i)) for i in range(3, 14)]
            chin_c = [(pt, chin(j)) for j, pt in enumerate(crease)]
            return (
                upper + corners + lines + upper_cont + above_c,
                lower + corners + lines + lower_cont + under_c + jaw_c + chin_c,
            )

        zero = lambda *_: (0.0, 0.0)  # noqa: E731
        out = []

        # open: lower lip and jaw drop (the jaw turns about the ears, so the chin drops most);
        # the upper lip lifts a little, the corners drop a third of the way and come in.
        drop = self._open_drop(q)
        rise = 0.03 * w
        jaw_share = {3: 0.1, 4: 0.3, 5: 0.55, 6: 0.8, 7: 0.95, 8: 1.0, 9: 0.95, 10: 0.8, 11: 0.55, 12: 0.3, 13: 0.1}
        narrow = 0.03 * w
        up = {i: (-narrow * t_of(q[i, 0]), -rise * prof(q[i, 0])) for i in upper_ids}
        # A full (flat-bottomed) drop profile: an open mouth is a rounded box, not a V.
        lo = {i: (-narrow * t_of(q[i, 0]), drop * (0.3 + 0.7 * prof(q[i, 0]) ** 0.6)) for i in lower_ids}
        out.append(assemble(
            up, lo,
            corner=lambda i: (-narrow * np.sign(t_of(q[i, 0])), 0.3 * drop),
            line=lambda side, f: (0.0, 0.3 * drop * (1.0 - 1.6 * f)),
            above=zero,
            under=lambda side: (0.0, 0.55 * drop),
            jaw=lambda i: (0.0, 1.2 * drop * jaw_share[i]),
            chin=lambda j: (0.0, 1.1 * drop * (1.0 if j == 1 else 0.95)),
        ))

        # wide: corners out and up, lips stretched thinner (the lower lip most).
        # Spread lips also part a little over the teeth, so the opening keeps its proportion.
        out_x, up_y, part = 0.09 * w, 0.035 * w, 0.02 * w
        up = {i: (out_x * t_of(q[i, 0]),
                  -up_y * t_of(q[i, 0]) ** 2 + (0.012 * w if i < 60 else -part * prof(q[i, 0])))
              for i in upper_ids}
        lo = {i: (out_x * t_of(q[i, 0]),
                  -up_y * t_of(q[i, 0]) ** 2 + (-0.03 * w if i < 60 else part) * prof(q[i, 0]))
              for i in lower_ids}
        out.append(assemble(
            up, lo,
            corner=lambda i: (out_x * np.sign(t_of(q[i, 0])), -up_y),
            line=lambda side, f: (side * out_x * (0.6 if f < 0.3 else 0.25), -up_y * (0.6 if f < 0.3 else 0.25)),
            above=lambda side: (side * 0.5 * out_x, -0.6 * up_y),
            under=lambda side: (side * 0.5 * out_x, -0.3 * up_y),
            jaw=zero,
            chin=lambda j: (0.0, -0.02 * w),
        ))

        # round: corners in, lips pushed out (they look fuller), the opening narrows and
        # the smile's raised corners level out.
        squeeze = 0.17 * w / (0.5 * float(np.linalg.norm(q[54] - q[48])))
        full = 0.04 * w
        corner_drop = 0.04 * w
        up = {i: (-squeeze * (q[i, 0] - cx),
                  (-full * prof(q[i, 0]) if i < 60 else 0.25 * gap_at(q[i, 0])) + corner_drop * t_of(q[i, 0]) ** 2)
              for i in upper_ids}
        lo = {i: (-squeeze * (q[i, 0] - cx),
                  (full * prof(q[i, 0]) if i < 60 else -0.3 * gap_at(q[i, 0])) + corner_drop * t_of(q[i, 0]) ** 2)
              for i in lower_ids}
        out.append(assemble(
            up, lo,
            corner=lambda i: (-squeeze * (q[i, 0] - cx), corner_drop),
            line=lambda side, f: (-side * 0.17 * w * (0.5 if f < 0.3 else 0.2), corner_drop * 0.5),
            above=lambda side: (-side * 0.06 * w, 0.0),
            under=lambda side: (-side * 0.06 * w, 0.0),
            jaw=zero,
            chin=zero,
        ))

        # press: the inner edges meet (the upper lip covers 45% of the photo's gap, the lower
        # lip the rest plus a little overlap) and both lips thin as they press.
        overlap = 0.6 + 0.03 * w
        up = {}
        for i in upper_ids:
            g = gap_at(q[i, 0])
            up[i] = (-0.02 * w * t_of(q[i, 0]), 0.45 * g + (0.25 * thick_upper(i) if i < 60 else 0.0))
        lo = {}
        for i in lower_ids:
            g = gap_at(q[i, 0])
            lo[i] = (-0.02 * w * t_of(q[i, 0]), -(0.55 * g + overlap) - (0.25 * thick_lower(i) if i < 60 else 0.0))
        lift = 0.55 * gap_at(q[66, 0])
        out.append(assemble(
            up, lo,
            corner=lambda i: (-0.02 * w * np.sign(t_of(q[i, 0])), 0.0),
            line=zero,
            above=zero,
            under=lambda side: (0.0, -0.2 * lift),
            jaw=lambda i: (0.0, -0.25 * lift * jaw_share[i]),
            chin=lambda j: (0.0, -0.5 * lift),
        ))

        # bite: the upper lip lifts off the teeth; the lower lip rises and rolls in under
        # them (so it thins), leaving a band of upper teeth showing above it.
        lift_up, show = 0.03 * w, 0.13 * w
        def bite_edge(x: float) -> float:
            # The lower lip's new inner edge, relative to where it is in the photo.
            visible = show * prof(x)
            if self.shows_teeth:  # overlap the photo's teeth, so no gap opens under them
                teeth_shown = float(np.interp(x, np.arange(len(self.gap)), self.gap))
                visible = min(visible, max(0.0, teeth_shown - 1.0))
            return visible - lift_up * prof(x) - gap_at(x)

        up = {i: (0.0, -lift_up * prof(q[i, 0])) for i in upper_ids}
        lo = {i: (0.0, bite_edge(q[i, 0]) - (0.3 * thick_lower(i) if i < 60 else 0.0)) for i in lower_ids}
        centre = bite_edge(q[66, 0])
        out.append(assemble(
            up, lo,
            corner=zero,
            line=zero,
            above=zero,
            under=lambda side: (0.0, 0.2 * min(centre, 0.0)),
            jaw=lambda i: (0.0, 0.3 * min(centre, 0.0) * jaw_share[i]),
            chin=lambda j: (0.0, 0.5 * centre),
        ))
        order = {OPEN: 0, WIDE: 1, ROUND: 2, PRESS: 3, BITE: 4}
        return [out[order[k]] for k in range(N_MOUTH_PARAMS)]


def _interp_curve(xs: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """A lip edge through landmark points, sampled per column (linear, lightly smoothed)."""
    order = np.argsort(pts[:, 0], kind="stable")
    ys = np.interp(xs, pts[order, 0], pts[order, 1])
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    padded = np.pad(ys, 2, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _snap_to_teeth(
    crop: np.ndarray, xs: np.ndarray, inside: np.ndarray, upper: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move the inner-lip edges onto the photo's teeth edges where teeth show (dlib is often a pixel or two off).

    Teeth are light and grey, lips red: the mean of green and blue separates them. Each
    edge moves at most 2.5 px, to the sharpest step of that measure near it.
    """
    score = crop[..., 1:].astype(np.float64).mean(axis=-1)
    h = crop.shape[0]
    new_upper, new_lower = upper.copy(), lower.copy()
    for i in np.flatnonzero(inside):
        if lower[i] - upper[i] < 2.0:
            continue
        col = score[:, int(xs[i])]
        lo_row, hi_row = int(math.floor(upper[i] - 2.5)), int(math.ceil(lower[i] + 2.5))
        if lo_row < 0 or hi_row >= h - 1:
            continue
        # Step between rows y and y + 1 sits at y + 0.5; a teeth edge has teeth on one side.
        steps = col[lo_row + 1 : hi_row + 1] - col[lo_row:hi_row]
        edges = np.arange(lo_row, hi_row) + 0.5
        teeth_level = np.median(col[int(math.ceil(upper[i])) : int(math.floor(lower[i])) + 1])
        teethy = col >= 0.85 * teeth_level
        near_up = (edges >= upper[i] - 1.5) & (edges <= upper[i] + 2.5) & teethy[lo_row + 1 : hi_row + 1]
        near_lo = (edges >= lower[i] - 2.5) & (edges <= lower[i] + 1.5) & teethy[lo_row:hi_row]
        rise = np.where(near_up, steps, -np.inf)
        fall = np.where(near_lo, -steps, -np.inf)
        if rise.max() > 12.0:
            new_upper[i] = _peak(edges, rise)
        if fall.max() > 12.0:
            new_lower[i] = _peak(edges, fall)
    # Per-column picks are noisy: smooth the correction, not the curve.
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    def smooth(delta: np.ndarray) -> np.ndarray:
        d = np.convolve(np.pad(delta, 2, mode="edge"), kernel, mode="valid")
        return np.convolve(np.pad(d, 2, mode="edge"), kernel, mode="valid") * inside
    return upper + smooth(new_upper - upper), lower + smooth(new_lower - lower)


def _peak(positions: np.ndarray, values: np.ndarray) -> float:
    """Sub-pixel position of the largest value (parabola through it and its neighbours)."""
    k = int(np.argmax(values))
    if 0 < k < len(values) - 1 and np.isfinite(values[k - 1]) and np.isfinite(values[k + 1]):
        a, b, c = values[k - 1], values[k], values[k + 1]
        denom = a - 2.0 * b + c
        if denom < 0.0:
            return float(positions[k] + np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float(positions[k])


def _border_window(width: int, height: int, margin: float) -> np.ndarray:
    """1 inside, easing to exactly 0 on the crop border."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        d = np.minimum(i, n - 1 - i) / max(margin, 1.0)
        d = np.clip(d, 0.0, 1.0)
        return d * d * (3.0 - 2.0 * d)

    return ramp(height)[:, None] * ramp(width)[None, :]


def _tps(centres: np.ndarray, values: np.ndarray, grid: np.ndarray, scale: float) -> np.ndarray:
    """Thin-plate spline through (centres, values), evaluated at grid points; (G, 2)."""
    centres, values = _dedupe(centres / scale, values)
    grid = grid / scale
    n = len(centres)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        r2 = np.maximum(r2, 1e-12)
        return 0.5 * r2 * np.log(r2)

    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel(centres, centres) + 1e-4 * np.eye(n)
    system[:n, n] = 1.0
    system[:n, n + 1 :] = centres
    system[n, :n] = 1.0
    system[n + 1 :, :n] = centres.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = values
    coef = np.linalg.solve(system, rhs)
    return kernel(grid, centres) @ coef[:n] + coef[n] + grid @ coef[n + 1 :]


def _dedupe(centres: np.ndarray, values: np.ndarray, tol: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    # Coincident centres make the spline singular: keep the first of each cluster.
    close = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1) <= tol * tol
    keep = np.ones(len(centres), dtype=bool)
    for i in range(len(centres)):
        if keep[i]:
            later = close[i].copy()
            later[: i + 1] = False
            keep &= ~later
    return centres[keep], values[keep]



# ---------------------------------------------------------------------------------------
# The torch half of the mouth.


class MouthWarp:
    """Renders the warped, painted mouth crop of a MouthRig for a batch of mouth shapes (torch, on `device`).

    By default the crop is the rig's own photo crop. For a video, each frame passes its own
    crop (same size for the batch, at least the rig's) and an affine map `to_ref` from that
    crop's pixels to the rig's crop pixels: the fields and parting-line tables are read
    where each pixel falls on the rig, and the samples are taken from the frame's own crop.
    """

    def __init__(self, rig: MouthRig, device: torch.device) -> None:
        self.rig = rig
        self.crop = c = rig.crop
        self.device = dev = device
        self._basis = torch.from_numpy(rig.basis.reshape(N_MOUTH_PARAMS, -1)).to(dev)
        gy, gx = torch.meshgrid(
            torch.arange(c.height, dtype=torch.float32), torch.arange(c.width, dtype=torch.float32), indexing="ij"
        )
        self._gx, self._gy = gx.to(dev), gy.to(dev)
        self._tables = torch.from_numpy(rig.tables).to(dev)
        self._crop_rgb = torch.from_numpy(rig.crop_rgb).permute(2, 0, 1).unsqueeze(0).float().contiguous().to(dev)
        self._to_grid = torch.tensor([2.0 / (c.width - 1), 2.0 / (c.height - 1)], dtype=torch.float32, device=dev)
        self._painter = MouthInteriorPainter(rig.colours, rig.mouth_width, dev, whole_teeth=not rig.shows_teeth)
        self._centre_x = float(rig.centre_x - c.x0)
        self._half_width = 0.5 * rig.mouth_width

    def render_planes(
        self, params: torch.Tensor, crops: torch.Tensor | None = None, to_ref: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 Y (B, h, w), U, V (B, h/2, w/2) of the crop for params (B, N_MOUTH_PARAMS)."""
        with torch.inference_mode():
            return rgb_to_yuv_planes(self.render_rgb(params, crops, to_ref))

    def render_rgb(
        self, params: torch.Tensor, crops: torch.Tensor | None = None, to_ref: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 3, h, w) float RGB. crops: (B, 3, h, w) float frames' crops; to_ref: (B, 2, 3) affine maps
        from their pixels to the rig crop's (both None: the rig's photo crop)."""
        c = self.crop
        b = params.shape[0]
        w = params.clamp(0.0, 1.0)
        # A closure wins over an opening (mouth.py: press forces a full closure); a bite
        # keeps the jaw nearly shut; rounded lips narrow the mouth, so the same jaw drop
        # would read as a taller opening.
        keep_open = (1.0 - w[:, PRESS]) * (1.0 - 0.85 * w[:, BITE]) * (1.0 - 0.15 * w[:, ROUND])
        # The first bit of opening shows least (the lower lip leaves the teeth), so it gets
        # a little more travel: the visible opening then grows evenly with `open`.
        opening = w[:, :1].pow(OPEN_GAMMA) * keep_open[:, None]
        w = torch.cat([opening, w[:, 1:]], dim=1)
        f = (w @ self._basis).view(b, 4, c.height, c.width)
        if to_ref is None:
            gx, gy = self._gx, self._gy
        else:
            h_out, w_out = crops.shape[-2:]
            vx = torch.arange(w_out, dtype=torch.float32, device=self.device).view(1, 1, w_out)
            vy = torch.arange(h_out, dtype=torch.float32, device=self.device).view(1, h_out, 1)
            a = to_ref.view(b, 6, 1, 1)
            gx = a[:, 0] * vx + a[:, 1] * vy + a[:, 2]
            gy = a[:, 3] * vx + a[:, 4] * vy + a[:, 5]
            # The fields are zero on the rig crop's border, so zeros beyond it continue them.
            where = torch.stack([gx, gy], dim=-1) * self._to_grid - 1.0
            f = F.grid_sample(f, where, mode="bilinear", padding_mode="zeros", align_corners=True)
        ux, uy = gx + f[:, 0], gy + f[:, 1]
        lx, ly = gx + f[:, 2], gy + f[:, 3]

        upper_bound, upper_lip, teeth, seam = self._lookup(ux, (0, 2, 3, 4))
        (lower_bound,) = self._lookup(lx, (1,))
        a_u = upper_bound - uy   # > 0: the upper field samples the upper side
        a_lip = upper_lip - uy   # depth into the upper lip itself (negative on the teeth)
        a_l = ly - lower_bound   # > 0: the lower field samples the lower side
        lower_ok, upper_ok = a_l > 0, a_u > 0
        take_lower = torch.where(lower_ok, ~upper_ok | (a_l > a_lip), ~upper_ok & (a_l > a_u))
        sx = torch.where(take_lower, lx, ux)
        # Clamp to the own side so pixels at an edge show that edge, not what lies across it.
        sy = torch.where(take_lower, torch.maximum(ly, lower_bound), torch.minimum(uy, upper_bound))
        if to_ref is None:
            grid = torch.stack([sx, sy], dim=-1) * self._to_grid - 1.0
            source = self._crop_rgb.expand(b, -1, -1, -1)
        else:
            back = _invert_affine(to_ref).view(b, 6, 1, 1)
            px = back[:, 0] * sx + back[:, 1] * sy + back[:, 2]
            py = back[:, 3] * sx + back[:, 4] * sy + back[:, 5]
            scale = torch.tensor([2.0 / (w_out - 1), 2.0 / (h_out - 1)], dtype=torch.float32, device=self.device)
            grid = torch.stack([px, py], dim=-1) * scale - 1.0
            source = crops
        image = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
        # Lips pressed together (or tucked under the teeth) shade the lower lip's top edge.
        contact = torch.maximum(w[:, PRESS], w[:, BITE]).view(b, 1, 1)
        shade = 1.0 - CONTACT_SHADE * contact * torch.exp(-a_l.clamp(min=0.0) / 1.2) * take_lower
        image = image * shade.unsqueeze(1)
        across = (ux - self._centre_x) / self._half_width
        return self._painter.paint(image, -a_u, -a_l, across, teeth, seam)

    def _lookup(self, x: torch.Tensor, rows: tuple[int, ...]) -> list[torch.Tensor]:
        """Linear interpolation of the per-column tables at fractional columns x (B, h, w), clamped to the crop."""
        b = x.shape[0]
        table = self._tables[list(rows)].view(1, len(rows), 1, -1).expand(b, -1, -1, -1)
        # A one-row image: bilinear sampling along x is the linear lookup, in one kernel.
        where = torch.stack([x * self._to_grid[0] - 1.0, torch.zeros_like(x)], dim=-1)
        out = F.grid_sample(table, where, mode="bilinear", padding_mode="border", align_corners=True)
        return list(out.unbind(1))


def _invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverses of (B, 2, 3) affine maps."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return torch.stack(
        [torch.stack([ia, ib, -(ia * c + ib * f)], dim=1), torch.stack([id_, ie, -(id_ * c + ie * f)], dim=1)], dim=1
    )


def mouth_track_for(speech: SpeechChunk, fps: int) -> np.ndarray:
    """Mouth parameters per video frame of a chunk: from its phonemes, else from its audio."""
    from models.lipsync.visemes import audio_mouth_track, mouth_track

    n_frames = math.ceil(round(speech.duration * fps, 6))
    if speech.phonemes:
        return mouth_track(speech.phonemes, n_frames, fps)
    return audio_mouth_track(speech.audio, speech.sample_rate, n_frames, fps)


# ---------------------------------------------------------------------------------------
# The renderer.


class PhotoWarpRenderer(LipSyncRenderer):
    """Lip-sync by warping the avatar photo's mouth and jaw, all in torch on `device`.

    With `life` (the default) the photo blinks, sways and nods (models/lipsync/life.py);
    life=None gives the still photo with only the mouth moving.
    """

    def __init__(
        self, avatar: PhotoAvatar, fps: int = 25, device: str | None = None,
        life: LifeSettings | None = LifeSettings(),
    ) -> None:
        self.avatar = avatar
        self.width, self.height, self.fps = avatar.width, avatar.height, int(fps)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        rig = MouthRig(avatar.rgb, avatar.landmarks)
        self.rig = rig
        self.crop = rig.crop
        self.mouth = MouthWarp(rig, self.device)
        base = rgb_to_yuv420(avatar.rgb)
        base.setflags(write=False)
        self._base = base
        self.life = (
            PhotoLife(avatar.rgb, avatar.landmarks, base, rig.crop, self.fps, life, self.device) if life else None
        )

    def idle_frame(self, tick: int) -> np.ndarray:
        """The photo at this tick: swaying and blinking with life (read-only; shared between calls)."""
        if self.life is None:
            return self._base
        return self.life.frames([tick])[0]

    def begin(self, speech: SpeechChunk, tick: int) -> FrameSource:
        track = mouth_track_for(speech, self.fps)
        nods = self.life.nods(speech.phonemes, len(track)) if self.life is not None else None
        return PhotoWarpFrames(self, track, tick, nods)

    def render_frames(
        self, params: np.ndarray, ticks: Sequence[int], nods: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """yuv420p speech frames: mouth parameters (B, N_MOUTH_PARAMS) shown at clock ticks (B,), with
        the head dipped by nods (B,) pixels (one torch batch)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, N_MOUTH_PARAMS)
        if len(params) == 0:
            return []
        if self.life is None:
            return self.render_mouth(params)
        planes = self.mouth.render_planes(torch.from_numpy(params).to(self.device))
        return self.life.frames(ticks, planes, nods)

    def render_mouth(self, params: np.ndarray) -> list[np.ndarray]:
        """yuv420p frames of the still photo (no blinks, no sway) for mouth parameters (B, N_MOUTH_PARAMS)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, N_MOUTH_PARAMS)
        if len(params) == 0:
            return []
        y, u, v = (p.cpu().numpy() for p in self.mouth.render_planes(torch.from_numpy(params).to(self.device)))
        frames = []
        for b in range(len(params)):
            frame = self._base.copy()
            paste_planes(frame, self.crop, y[b], u[b], v[b])
            frames.append(frame)
        return frames

    def render_rgb_crop(self, params: np.ndarray) -> np.ndarray:
        """The warped, painted crop as (B, h, w, 3) uint8 RGB (for previews and checks)."""
        p = torch.from_numpy(np.asarray(params, dtype=np.float32).reshape(-1, N_MOUTH_PARAMS)).to(self.device)
        with torch.inference_mode():
            rgb = self.mouth.render_rgb(p)
        return rgb.clamp(0, 255).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class PhotoWarpFrames(FrameSource):
    """The frames of one speech chunk: its mouth track (and head nods), rendered in batches on demand.

    Frame i is shown at clock tick `tick + i`; anything alive in the picture follows that tick.
    `renderer` is anything with `render_frames(params, ticks, nods)` (photo or video).
    """

    def __init__(self, renderer, track: np.ndarray, tick: int = 0, nods: np.ndarray | None = None) -> None:
        self.renderer = renderer
        self.track = np.asarray(track, dtype=np.float32)
        self.n_frames = len(self.track)
        self.tick = int(tick)
        self.nods = nods

    def render(self, start: int, count: int) -> list[np.ndarray]:
        if start < 0 or count < 0 or start + count > self.n_frames:
            raise IndexError(f"frames [{start}, {start + count}) outside this chunk's {self.n_frames} frames")
        frames: list[np.ndarray] = []
        for i in range(start, start + count, RENDER_BATCH):
            j = min(start + count, i + RENDER_BATCH)
            nods = self.nods[i:j] if self.nods is not None else None
            frames += self.renderer.render_frames(self.track[i:j], range(self.tick + i, self.tick + j), nods)
        return frames
