"""Wav2Lip neural lip-sync: a still avatar whose lower face is regenerated from the speech audio.

The face crop (box + 10 px below, for the chin) is resized to 96x96, its lower half masked,
and fed with itself as the reference. The net's output is resized back to the box and
blended in with a soft mask over the lower face, so nothing outside the box ever changes.
All image work (resize, blend, RGB -> yuv420p) runs in torch on the net's device; only the
changed region of each frame is copied back to the host.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.lipsync.mel import MelFrontEnd, mel_windows
from models.lipsync.renderer import FrameSource, LipSyncRenderer
from models.lipsync.wav2lip_checkpoint import load_wav2lip_checkpoint
from models.lipsync.wav2lip_net import FACE_SIZE, Wav2LipNet
from models.lipsync.yuv import rgb_to_yuv_planes as rgb_to_yuv420p_planes
from models.speech import SpeechChunk

CHIN_PAD = 10  # pixels added below the face box, as the checkpoints were trained with


def lower_face_mask(height: int, width: int) -> np.ndarray:
    """(height, width) float32 blend weights: 1 over the mouth and jaw, easing to 0 above the
    middle of the box and at its sides and bottom edge (exactly 0 on the border)."""
    def smooth(edge0: float, edge1: float, t: np.ndarray) -> np.ndarray:
        k = np.clip((t - edge0) / (edge1 - edge0), 0.0, 1.0)
        return k * k * (3.0 - 2.0 * k)

    v = (np.arange(height) + 0.5) / height
    u = (np.arange(width) + 0.5) / width
    # The net only regenerates the lower half; its upper half is a blurrier copy of the input.
    vertical = smooth(0.42, 0.6, v) * smooth(1.0, 0.88, v)
    horizontal = smooth(0.0, 0.14, u) * smooth(1.0, 0.86, u)
    mask = vertical[:, None] * horizontal[None, :]
    mask[0, :] = mask[-1, :] = 0.0
    mask[:, 0] = mask[:, -1] = 0.0
    return mask.astype(np.float32)


class FaceCompositor:
    """Turns the avatar into the net's face input and pastes net outputs back as yuv420p frames."""

    def __init__(self, avatar_rgb: np.ndarray, face_box: tuple[int, int, int, int], device: torch.device) -> None:
        if avatar_rgb.dtype != np.uint8 or avatar_rgb.ndim != 3 or avatar_rgb.shape[2] != 3:
            raise ValueError(f"avatar must be an (H, W, 3) uint8 RGB image, got {avatar_rgb.dtype} {avatar_rgb.shape}")
        height, width = avatar_rgb.shape[:2]
        if height % 2 or width % 2:
            raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}; crop the avatar by a pixel")
        x0, y0, x1, y1 = (int(c) for c in face_box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"face box {face_box} does not lie inside the {width}x{height} avatar")
        y1 = min(height, y1 + CHIN_PAD)
        if min(x1 - x0, y1 - y0) < 16:
            raise ValueError(f"face box {face_box} is smaller than 16 px; use a larger photo or a closer crop")
        self.height, self.width = height, width
        self.device = device
        self.box = (x0, y0, x1, y1)
        # The rewritten region: the box grown to even coordinates so chroma blocks are whole.
        self.region = (x0 & ~1, y0 & ~1, x1 + (x1 & 1), y1 + (y1 & 1))
        rx0, ry0, rx1, ry1 = self.region

        full = torch.from_numpy(np.ascontiguousarray(avatar_rgb)).permute(2, 0, 1)[None]
        self.idle_yuv = self._pack(*(p[0].numpy() for p in rgb_to_yuv420p_planes(full)))
        self._region_rgb = full[:, :, ry0:ry1, rx0:rx1].to(device)
        self._box_in_region = (x0 - rx0, y0 - ry0)
        self._box_rgb = full[:, :, y0:y1, x0:x1].to(device=device, dtype=torch.float32)
        self._mask = torch.from_numpy(lower_face_mask(y1 - y0, x1 - x0)).to(device)[None, None]

        face_bgr = self._box_rgb.flip(1) / 255.0
        face = F.interpolate(face_bgr, size=(FACE_SIZE, FACE_SIZE), mode="bilinear",
                             align_corners=False, antialias=True).clamp(0.0, 1.0)
        masked = face.clone()
        masked[:, :, FACE_SIZE // 2:] = 0.0
        self.face_input = torch.cat((masked, face), dim=1)  # (1, 6, 96, 96)

    def compose(self, faces_bgr: torch.Tensor) -> list[np.ndarray]:
        """Net outputs (B,3,96,96) BGR in [0,1] -> B packed yuv420p frames."""
        x0, y0, x1, y1 = self.box
        pred = F.interpolate(faces_bgr.float().flip(1), size=(y1 - y0, x1 - x0), mode="bilinear",
                             align_corners=False) * 255.0
        blended = self._box_rgb + (pred - self._box_rgb) * self._mask
        region = self._region_rgb.expand(len(faces_bgr), -1, -1, -1).clone()
        bx, by = self._box_in_region
        region[:, :, by:by + y1 - y0, bx:bx + x1 - x0] = blended.round().clamp(0, 255).to(torch.uint8)
        y, u, v = (p.cpu().numpy() for p in rgb_to_yuv420p_planes(region))
        return [self._paste(y[i], u[i], v[i]) for i in range(len(region))]

    def _paste(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        frame = self.idle_yuv.copy()
        y_plane, u_plane, v_plane = self._planes(frame)
        rx0, ry0, rx1, ry1 = self.region
        y_plane[ry0:ry1, rx0:rx1] = y
        u_plane[ry0 // 2:ry1 // 2, rx0 // 2:rx1 // 2] = u
        v_plane[ry0 // 2:ry1 // 2, rx0 // 2:rx1 // 2] = v
        return frame

    def _planes(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Writable views of the Y, U, V planes inside a packed (h*3//2, w) frame."""
        h, w = self.height, self.width
        flat = frame.reshape(-1)
        luma = h * w
        chroma = luma // 4
        return (flat[:luma].reshape(h, w),
                flat[luma:luma + chroma].reshape(h // 2, w // 2),
                flat[luma + chroma:].reshape(h // 2, w // 2))

    def _pack(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        frame = np.empty((self.height * 3 // 2, self.width), dtype=np.uint8)
        y_plane, u_plane, v_plane = self._planes(frame)
        y_plane[:], u_plane[:], v_plane[:] = y, u, v
        return frame


class Wav2LipFrameSource(FrameSource):
    """The frames of one speech chunk: mel windows computed up front, the net run per request."""

    def __init__(self, net: Wav2LipNet, compositor: FaceCompositor, windows: np.ndarray, batch_size: int) -> None:
        self.n_frames = len(windows)
        self._net = net
        self._compositor = compositor
        self._windows = torch.from_numpy(windows).to(compositor.device)
        self._batch_size = batch_size

    def render(self, start: int, count: int) -> list[np.ndarray]:
        if start < 0 or count < 0 or start + count > self.n_frames:
            raise IndexError(f"frames [{start}, {start + count}) are outside this chunk's 0..{self.n_frames}")
        frames: list[np.ndarray] = []
        with torch.inference_mode():
            for first in range(start, start + count, self._batch_size):
                mels = self._windows[first:min(first + self._batch_size, start + count)]
                frames += self._compositor.compose(self._infer(mels))
        return frames

    def _infer(self, mels: torch.Tensor) -> torch.Tensor:
        """Net outputs for a batch of mel windows (fp16 autocast on CUDA, fp32 elsewhere)."""
        device = self._compositor.device
        faces = self._compositor.face_input.expand(len(mels), -1, -1, -1)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return self._net(mels, faces)


class Wav2LipRenderer(LipSyncRenderer):
    """Lip-sync with a user-supplied Wav2Lip generator checkpoint; batched fp16 on CUDA, fp32 on CPU."""

    def __init__(self, avatar_rgb: np.ndarray, face_box: tuple[int, int, int, int], checkpoint: Path,
                 fps: int = 25, device: str | torch.device | None = None, batch_size: int = 16) -> None:
        if fps <= 0 or batch_size <= 0:
            raise ValueError(f"fps and batch_size must be positive (got {fps}, {batch_size})")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fps = fps
        self.batch_size = batch_size
        self._compositor = FaceCompositor(avatar_rgb, face_box, self.device)
        self.height, self.width = self._compositor.height, self._compositor.width
        self._net = load_wav2lip_checkpoint(checkpoint, self.device)
        if self.device.type == "cuda":
            self._net = self._net.to(memory_format=torch.channels_last)
        self._mel = MelFrontEnd()

    def idle_frame(self, tick: int) -> np.ndarray:
        return self._compositor.idle_yuv

    def n_frames_for(self, speech: SpeechChunk) -> int:
        """Video frames covering the chunk's audio (the last one may be partly silent)."""
        return -(-len(speech.audio) * self.fps // speech.sample_rate)

    def begin(self, speech: SpeechChunk, tick: int) -> FrameSource:
        n_frames = self.n_frames_for(speech)
        windows = mel_windows(self._mel(speech.audio, speech.sample_rate), n_frames, self.fps)
        return Wav2LipFrameSource(self._net, self._compositor, windows, self.batch_size)
