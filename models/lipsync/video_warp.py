"""Lip-sync on a video avatar: the prepared footage loops as the idle picture, the mouth is warped on top.

The footage plays forwards then backwards (ping-pong), so the loop never jumps; the frame
for a clock tick follows the avatar's own frame rate. The mouth rig (crop, displacement
fields, parting-line tables, interior colours) is built once on a reference frame, the
one whose face is closest to the clip's average. Each frame gets a similarity transform
(scale, rotation, shift) from the reference, fitted to its smoothed nose, eye-corner and
lip landmarks, a mouth box of one common size around the mapped crop, and that box's
pixels. Per speech frame, MouthWarp reads the reference's fields through the transform and
samples the frame's own pixels, so a moving head keeps its moving mouth.

Memory: the footage is kept as yuv420p (1.5 bytes per pixel, half the RGB) plus the mouth
boxes in RGB; 250 frames of 512x512 take about 100 MB.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from models.avatar.photo import PhotoAvatar
from models.avatar.store import PreparedAvatar
from models.lipsync.mouth import N_MOUTH_PARAMS
from models.lipsync.photo_warp import MouthRig, MouthWarp, PhotoWarpFrames, mouth_track_for
from models.lipsync.renderer import FrameSource, LipSyncRenderer
from models.lipsync.yuv import CropBox, paste_planes, rgb_to_yuv_planes, yuv420_planes
from models.speech import SpeechChunk

# Landmarks that move with the head but hardly with speech or expression: nose, eye corners, lips.
STABLE_POINTS = np.r_[27:36, 36, 39, 42, 45, 48:60]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) least-squares similarity (uniform scale, rotation, shift) taking points src to dst."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sing, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sing) @ flip) / (s * s).sum(axis=1).mean())
    out = np.zeros((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The affine map x -> a(b(x)) as (2, 3)."""
    out = np.zeros((2, 3))
    out[:, :2] = a[:, :2] @ b[:, :2]
    out[:, 2] = a[:, :2] @ b[:, 2] + a[:, 2]
    return out


def _invert(m: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(m[:, :2])
    return np.concatenate([inv, (-inv @ m[:, 2])[:, None]], axis=1)


def reference_frame(landmarks: np.ndarray) -> int:
    """The frame whose stable landmarks, aligned to the clip's mean shape, lie closest to it."""
    pts = landmarks[:, STABLE_POINTS].astype(np.float64)
    first = pts[0]
    aligned = np.stack([_apply(similarity(p, first), p) for p in pts])
    mean = aligned.mean(axis=0)
    return int(np.argmin(((aligned - mean) ** 2).sum(axis=(1, 2))))


def ping_pong(position: int, n: int) -> int:
    """Frame index of step `position` through n frames played 0..n-1, n-2..1, 0..."""
    if n <= 1:
        return 0
    r = position % (2 * (n - 1))
    return r if r < n else 2 * (n - 1) - r


class VideoWarpRenderer(LipSyncRenderer):
    """Lip-sync on a looping video avatar (a PreparedAvatar of kind video), in torch on `device`."""

    def __init__(self, avatar: PreparedAvatar, fps: int = 25, device: str | None = None) -> None:
        if avatar.n_frames < 1:
            raise ValueError(f"video avatar '{avatar.name}' has no frames; prepare it again")
        self.name = avatar.name
        self.width, self.height, self.fps = avatar.width, avatar.height, int(fps)
        self.source_fps = float(avatar.fps) if avatar.fps > 0 else float(fps)
        self.n_source = avatar.n_frames
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        marks = avatar.landmarks.astype(np.float64)
        self.reference = ref = reference_frame(marks)
        # The reference frame as a photo, for anything that wants one (a copy: the footage's RGB
        # is not kept alive by this renderer).
        self.avatar = PhotoAvatar(avatar.name, avatar.frames[ref].copy(), avatar.landmarks[ref].copy())
        rig = MouthRig(self.avatar.rgb, marks[ref])
        self.rig = rig
        self.mouth = MouthWarp(rig, self.device)

        # ref image coords -> frame k image coords
        to_frame = [similarity(marks[ref, STABLE_POINTS], marks[k, STABLE_POINTS]) for k in range(self.n_source)]
        scales = np.array([math.sqrt(abs(np.linalg.det(m[:, :2]))) for m in to_frame])
        c = rig.crop
        # One box size for all frames (batches stack them), large enough for the most zoomed-in frame.
        grow = float(max(1.0, scales.max()))
        box_w = min(self.width, 2 * math.ceil((c.width * grow + 4) / 2))
        box_h = min(self.height, 2 * math.ceil((c.height * grow + 4) / 2))
        centre = np.array([[c.x0 + 0.5 * c.width, c.y0 + 0.5 * c.height]])
        self.boxes: list[CropBox] = []
        to_ref = np.zeros((self.n_source, 2, 3), dtype=np.float32)
        crops = np.empty((self.n_source, box_h, box_w, 3), dtype=np.uint8)
        for k, m in enumerate(to_frame):
            cx, cy = _apply(m, centre)[0]
            x0 = int(np.clip(2 * round((cx - 0.5 * box_w) / 2), 0, self.width - box_w))
            y0 = int(np.clip(2 * round((cy - 0.5 * box_h) / 2), 0, self.height - box_h))
            box = CropBox(x0, y0, box_w, box_h)
            self.boxes.append(box)
            # box pixel -> frame k image -> ref image -> ref crop pixel
            box_to_image = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])
            ref_to_crop = np.array([[1.0, 0.0, -c.x0], [0.0, 1.0, -c.y0]])
            to_ref[k] = _compose(ref_to_crop, _compose(_invert(m), box_to_image))
            crops[k] = avatar.frames[k, y0 : y0 + box_h, x0 : x0 + box_w]
        self._to_ref = torch.from_numpy(to_ref).to(self.device)
        self._crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(self.device)
        self._frames = self._to_yuv(avatar.frames)

    @property
    def loop_ticks(self) -> float:
        """Clock ticks after which the idle footage repeats (forwards and back)."""
        return 2 * max(self.n_source - 1, 1) * self.fps / self.source_fps

    def frame_index(self, tick: int) -> int:
        """The footage frame shown at clock tick `tick`."""
        position = math.floor(tick * self.source_fps / self.fps + 1e-6)
        return ping_pong(position, self.n_source)

    def idle_frame(self, tick: int) -> np.ndarray:
        """The footage frame of this tick (read-only)."""
        return self._frames[self.frame_index(tick)]

    def begin(self, speech: SpeechChunk, tick: int) -> FrameSource:
        return PhotoWarpFrames(self, mouth_track_for(speech, self.fps), tick)

    def render_frames(
        self, params: np.ndarray, ticks: Sequence[int], nods: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """yuv420p frames: mouth parameters (B, N_MOUTH_PARAMS) on the footage frames of clock ticks (B,)."""
        params = np.asarray(params, dtype=np.float32).reshape(-1, N_MOUTH_PARAMS)
        if len(params) == 0:
            return []
        index = [self.frame_index(t) for t in ticks]
        if len(index) != len(params):
            raise ValueError(f"{len(params)} mouth shapes for {len(index)} ticks")
        at = torch.tensor(index, device=self.device)
        with torch.inference_mode():
            rgb = self.mouth.render_rgb(
                torch.from_numpy(params).to(self.device), self._crops[at].float(), self._to_ref[at]
            )
            y, u, v = (p.cpu().numpy() for p in rgb_to_yuv_planes(rgb))
        frames = []
        for b, k in enumerate(index):
            frame = self._frames[k].copy()
            paste_planes(frame, self.boxes[k], y[b], u[b], v[b])
            frames.append(frame)
        return frames

    def _to_yuv(self, frames: np.ndarray, batch: int = 16) -> list[np.ndarray]:
        out = []
        h, w = self.height, self.width
        for i in range(0, len(frames), batch):
            rgb = torch.from_numpy(frames[i : i + batch]).permute(0, 3, 1, 2)
            y, u, v = rgb_to_yuv_planes(rgb)
            for k in range(len(rgb)):
                frame = np.empty((h * 3 // 2, w), dtype=np.uint8)
                py, pu, pv = yuv420_planes(frame)
                py[:], pu[:], pv[:] = y[k].numpy(), u[k].numpy(), v[k].numpy()
                frame.setflags(write=False)
                out.append(frame)
        return out
