"""RGB <-> yuv420p (BT.601 limited range, what libvpx/aiortc and browsers assume), for every renderer.

Packed frames are one uint8 array of shape (H * 3 // 2, W): the Y plane, then U, then V, the
layout `av.VideoFrame.from_ndarray(array, format="yuv420p")` takes.

The forward conversion is exact integer arithmetic, so CPU and CUDA give identical bytes and
the unchanged parts of a rendered frame equal the idle frame exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropBox:
    """A region of a frame: top-left (x0, y0) and size, all even so its chroma is whole 2x2 blocks."""

    x0: int
    y0: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        return self.y0 + self.height

    @classmethod
    def around(cls, x0: float, y0: float, x1: float, y1: float, frame_w: int, frame_h: int) -> "CropBox":
        """The smallest even-aligned box holding [x0, x1) x [y0, y1), clipped to the frame."""
        a, b = max(0, int(np.floor(x0)) // 2 * 2), max(0, int(np.floor(y0)) // 2 * 2)
        c, d = min(frame_w, -(-int(np.ceil(x1)) // 2) * 2), min(frame_h, -(-int(np.ceil(y1)) // 2) * 2)
        return cls(a, b, max(0, c - a), max(0, d - b))

    def grown(self, margin: int, frame_w: int, frame_h: int) -> "CropBox":
        """This box with `margin` pixels more on every side, clipped to the frame."""
        return CropBox.around(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin, frame_w, frame_h)

    def union(self, other: "CropBox") -> "CropBox":
        x0, y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        return CropBox(x0, y0, max(self.x1, other.x1) - x0, max(self.y1, other.y1) - y0)

    def overlaps(self, other: "CropBox") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def luma(self) -> tuple[slice, slice]:
        """(rows, cols) of this box in a Y plane."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def chroma(self) -> tuple[slice, slice]:
        """(rows, cols) of this box in a U or V plane."""
        return slice(self.y0 // 2, self.y1 // 2), slice(self.x0 // 2, self.x1 // 2)

    def within(self, outer: "CropBox") -> "CropBox":
        """This box in the coordinates of `outer` (which must hold it)."""
        return CropBox(self.x0 - outer.x0, self.y0 - outer.y0, self.width, self.height)


def rgb_to_yuv_planes(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) RGB, uint8 or float in [0, 255] (rounded), H and W even -> uint8 Y (B, H, W), U, V (B, H/2, W/2).

    Integer arithmetic (BT.601 in 8-bit fixed point), carried out in float32, where every
    value here is an integer below 2**24 and so exact: the same bytes on any device.
    """
    if rgb.dtype == torch.uint8:
        x = rgb.float()
    else:
        x = rgb.clamp(0.0, 255.0).add(0.5).floor_()
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = (66.0 * r + 129.0 * g + 25.0 * b + 128.0).div_(256.0).floor_().add_(16.0)
    # Chroma from the 2x2 block sums (4x the mean), hence 4x the divisor.
    s = F.avg_pool2d(x, 2).mul_(4.0)
    rs, gs, bs = s[:, 0], s[:, 1], s[:, 2]
    u = (-38.0 * rs - 74.0 * gs + 112.0 * bs + 512.0).div_(1024.0).floor_().add_(128.0)
    v = (112.0 * rs - 94.0 * gs - 18.0 * bs + 512.0).div_(1024.0).floor_().add_(128.0)
    return y.to(torch.uint8), u.clamp_(0, 255).to(torch.uint8), v.clamp_(0, 255).to(torch.uint8)


def yuv420_planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (writable if the frame is) of the Y (H, W), U and V (H/2, W/2) planes of a packed frame."""
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    flat = frame.reshape(-1)
    luma, chroma = h * w, h * w // 4
    return (
        flat[:luma].reshape(h, w),
        flat[luma : luma + chroma].reshape(h // 2, w // 2),
        flat[luma + chroma :].reshape(h // 2, w // 2),
    )


def pack_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Y (H, W), U and V (H/2, W/2) uint8 planes -> one packed (H * 3 // 2, W) frame."""
    h, w = y.shape
    out = np.empty((h * 3 // 2, w), dtype=np.uint8)
    py, pu, pv = yuv420_planes(out)
    py[:], pu[:], pv[:] = y, u, v
    return out


def paste_planes(frame: np.ndarray, box: CropBox, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Write Y (h, w), U and V (h/2, w/2) planes into a packed frame at `box` (in place)."""
    py, pu, pv = yuv420_planes(frame)
    py[box.luma()] = y
    pu[box.chroma()] = u
    pv[box.chroma()] = v


def rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB (H, W even) -> packed yuv420p (H * 3 // 2, W) uint8."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    y, u, v = rgb_to_yuv_planes(t)
    return pack_yuv420(y[0].numpy(), u[0].numpy(), v[0].numpy())


def yuv420_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Packed yuv420p (H * 3 // 2, W) uint8 -> (H, W, 3) uint8 RGB (for checks and previews)."""
    y, u, v = (p.astype(np.float32) for p in yuv420_planes(frame))
    y = y - 16.0
    u = (u - 128.0).repeat(2, axis=0).repeat(2, axis=1)
    v = (v - 128.0).repeat(2, axis=0).repeat(2, axis=1)
    r = 1.164383 * y + 1.596027 * v
    g = 1.164383 * y - 0.391762 * u - 0.812968 * v
    b = 1.164383 * y + 2.017232 * u
    return np.clip(np.stack([r, g, b], axis=-1) + 0.5, 0, 255).astype(np.uint8)
