"""Painting what a photo with closed (or smiling) lips never showed: the inside of an open mouth.

Inputs are per-pixel measurements made by the warp: how far a pixel lies below the upper
teeth/lip edge and above the lower lip edge, both in pixels, and where it sits across the
mouth. From them the painter draws, back to front: a dark red-brown cavity with a vertical
gradient, a tongue at the bottom, a hint of lower teeth on a wide opening, and the upper
teeth band under the upper lip. Colours come from the photo itself (its lips and, when the
photo shows them, its teeth), so the interior matches the face's lighting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_TEETH_RGB = (240.0, 230.0, 206.0)
TOOTH_ANGLE = 0.29  # radians of dental arch per painted tooth (about 16 degrees)


@dataclass(frozen=True)
class InteriorColours:
    """RGB colours (0-255 floats) of the painted mouth interior."""

    teeth: tuple[float, float, float]
    cavity_top: tuple[float, float, float]
    cavity_bottom: tuple[float, float, float]
    tongue: tuple[float, float, float]

    @classmethod
    def from_photo(cls, lip_pixels: np.ndarray, teeth_pixels: np.ndarray) -> "InteriorColours":
        """Colours matched to the photo: lip_pixels and teeth_pixels are (N, 3) RGB samples (teeth may be empty)."""
        lip = np.median(lip_pixels.reshape(-1, 3).astype(np.float64), axis=0) if lip_pixels.size else np.array([170.0, 90.0, 90.0])
        seen = photo_teeth_colour(teeth_pixels)
        # A lit photo's teeth are brighter than its teeth's hidden, shadowed biting edge.
        teeth = np.array(DEFAULT_TEETH_RGB) if seen is None else 0.93 * (0.85 * seen + 0.15 * np.array(DEFAULT_TEETH_RGB))
        tint = lip / max(lip.max(), 1.0)
        cavity_top = 34.0 * tint + np.array([6.0, 2.0, 2.0])
        cavity_bottom = 78.0 * tint + np.array([10.0, 0.0, 0.0])
        tongue = 0.62 * lip + np.array([18.0, 0.0, 4.0])
        as_tuple = lambda a: tuple(float(v) for v in np.clip(a, 0.0, 255.0))  # noqa: E731
        return cls(as_tuple(teeth), as_tuple(cavity_top), as_tuple(cavity_bottom), as_tuple(tongue))


def photo_teeth_colour(pixels: np.ndarray) -> np.ndarray | None:
    """The mean colour of the brighter pixels between a photo's lips, if they look like teeth (light, greyish)."""
    px = pixels.reshape(-1, 3).astype(np.float64)
    if len(px) < 6:
        return None
    luma = px @ np.array([0.299, 0.587, 0.114])
    candidate = px[luma >= np.percentile(luma, 60)].mean(axis=0)
    if candidate @ np.array([0.299, 0.587, 0.114]) > 140 and candidate.max() - candidate.min() < 70:
        return candidate
    return None


class MouthInteriorPainter:
    """Colours the gap between the lips, given the warp's per-pixel distances to both lip edges."""

    def __init__(
        self, colours: InteriorColours, mouth_width: float, device: torch.device, whole_teeth: bool = True
    ) -> None:
        def vec(c: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(c, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        self.teeth = vec(colours.teeth)
        self.cavity_top = vec(colours.cavity_top)
        self.cavity_step = vec(colours.cavity_bottom) - self.cavity_top
        self.tongue = vec(colours.tongue)
        self.lower_teeth = self.teeth * 0.72
        self.mouth_width = float(mouth_width)
        # False when the photo's own teeth show and only their hidden biting edge is painted:
        # then no lip shadow and no gaps between teeth (the photo has its own).
        self.whole_teeth = whole_teeth

    def paint(
        self,
        image: torch.Tensor,
        below_upper: torch.Tensor,
        above_lower: torch.Tensor,
        across: torch.Tensor,
        teeth_height: torch.Tensor,
        seam: torch.Tensor | float = 0.0,
    ) -> torch.Tensor:
        """Blend the interior into image (B, 3, H, W) float RGB.

        below_upper / above_lower: (B, H, W) distances in pixels below the upper edge (upper
        teeth or lip) and above the lower lip edge, both positive inside the gap.
        across: (B, H, W) position across the mouth, -1 at one corner, 1 at the other.
        teeth_height: (B, H, W) how far the painted upper teeth reach below the upper edge.
        seam: half-width of the band between the lips that the photo itself shows at rest
        (a number or (B, H, W)).
        """
        dt, db = below_upper, above_lower
        gap = (dt + db).clamp_(min=1e-3)
        # Antialiased coverage: 0 on either lip edge, 1 a pixel inside the gap; nothing on
        # gaps thinner than the photo's own edge seam (the mouth at rest).
        alpha = torch.minimum(dt, db).clamp_(0.0, 1.0) * (gap - 2.0 * seam).clamp_(0.0, 1.0)
        u2 = (across * across).clamp_(max=1.0)
        ellipse = (1.0 - u2).clamp_(min=0.0).sqrt_()

        depth = (dt / gap).clamp_(0.0, 1.0)
        depth = depth * depth * (3.0 - 2.0 * depth)
        colour = self.cavity_top + self.cavity_step * depth.unsqueeze(1)

        # Tongue: a low dome resting on the lower teeth, only once the mouth opens.
        tongue_h = 0.32 * gap * ellipse * ((gap - 0.08 * self.mouth_width) / (0.1 * self.mouth_width)).clamp(0.0, 1.0)
        colour = _mix(colour, self.tongue, ((tongue_h - db) / 1.5).clamp(0.0, 1.0))

        # Lower incisor tips peek above the lower lip on a wide opening.
        lower_h = (0.22 * (gap - 0.24 * self.mouth_width)).clamp(0.0, 0.07 * self.mouth_width) * ellipse
        colour = _mix(colour, self.lower_teeth, (lower_h - db).clamp(0.0, 1.0))

        # Upper teeth: a touch darker at the biting edge and toward the corners.
        edge = (dt / (teeth_height + 1.0)).clamp(0.0, 1.0)
        shade = (1.0 - 0.14 * edge) * (1.0 - 0.4 * u2)
        reach = teeth_height
        if self.whole_teeth:
            shade = shade * (1.0 - 0.12 * torch.exp(-dt * dt))  # the upper lip's shadow
            # Teeth sit on an arch: equal angles, so their projected widths shrink toward the
            # corners. A faint line between neighbours, and a small notch in the biting edge.
            angle = torch.asin(across.clamp(-0.999, 0.999))
            phase = angle / TOOTH_ANGLE
            offset = (phase - phase.round()).abs() * TOOTH_ANGLE * torch.cos(angle) * (0.5 * self.mouth_width)
            near_gap = torch.exp(-(offset * offset) / 0.3)
            shade = shade * (1.0 - 0.15 * near_gap)
            reach = reach - 1.2 * near_gap
        colour = _mix(colour, self.teeth * shade.unsqueeze(1), (reach - dt + 0.5).clamp(0.0, 1.0))

        # The corners of the mouth are in the cheeks' shadow.
        colour = colour * (1.0 - 0.55 * u2 * u2).unsqueeze(1)
        return _mix(image, colour, alpha)


def _mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t.unsqueeze(1)
