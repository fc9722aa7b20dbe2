"""The Wav2Lip generator (96x96 face, 80x16 mel window), laid out so that the public
generator checkpoints (wav2lip.pth, wav2lip_gan.pth) load into it key for key.

Module names are part of the checkpoint format: `face_encoder_blocks`, `audio_encoder`,
`face_decoder_blocks`, `output_block`, and inside each conv unit `conv_block.0` (conv) and
`conv_block.1` (batch norm). Do not rename them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FACE_SIZE = 96
MEL_BINS = 80
MEL_STEP = 16


class ConvUnit(nn.Module):
    """Conv2d + BatchNorm + ReLU; a residual unit adds its input before the ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int] = 1,
                 padding: int = 0, residual: bool = False) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise ValueError("a residual unit keeps its width and resolution (cin == cout, stride 1)")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return F.relu(y)


class UpConvUnit(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_block(x))


def _res(width: int, count: int) -> list[nn.Module]:
    """`count` residual 3x3 units at `width`."""
    return [ConvUnit(width, width, 3, 1, 1, residual=True) for _ in range(count)]


def _down(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """Halve the resolution (3x3 stride 2) then refine with residual units."""
    return nn.Sequential(ConvUnit(cin, cout, 3, 2, 1), *_res(cout, residuals))


def _up(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """Double the resolution (3x3 transposed, stride 2) then refine with residual units."""
    return nn.Sequential(UpConvUnit(cin, cout, 3, 2, 1, 1), *_res(cout, residuals))


class Wav2LipNet(nn.Module):
    """Mel window (B,1,80,16) + face pair (B,6,96,96) -> lower-face-corrected face (B,3,96,96) in [0,1].

    The 6 face channels are the masked target (lower half zeroed) then the reference, both
    BGR in [0,1]. 5-D inputs (B,T,1,80,16) and (B,6,T,96,96) are folded over T and the
    output comes back as (B,3,T,96,96).
    """

    def __init__(self) -> None:
        super().__init__()
        # Face encoder: 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1; every stage output is a skip.
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvUnit(6, 16, 7, 1, 3)),
            _down(16, 32, 2),
            _down(32, 64, 3),
            _down(64, 128, 2),
            _down(128, 256, 2),
            _down(256, 512, 1),
            nn.Sequential(ConvUnit(512, 512, 3, 1, 0), ConvUnit(512, 512, 1, 1, 0)),
        ])
        # Audio encoder: 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1 embedding of width 512.
        self.audio_encoder = nn.Sequential(
            ConvUnit(1, 32, 3, 1, 1), *_res(32, 2),
            ConvUnit(32, 64, 3, (3, 1), 1), *_res(64, 2),
            ConvUnit(64, 128, 3, 3, 1), *_res(128, 2),
            ConvUnit(128, 256, 3, (3, 2), 1), *_res(256, 1),
            ConvUnit(256, 512, 3, 1, 0), ConvUnit(512, 512, 1, 1, 0),
        )
        # Decoder: starts from the audio embedding; the input width of each stage is its
        # predecessor's output plus the matching encoder skip.
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(ConvUnit(512, 512, 1, 1, 0)),
            nn.Sequential(UpConvUnit(1024, 512, 3, 1, 0), *_res(512, 1)),
            _up(1024, 512, 2),
            _up(768, 384, 2),
            _up(512, 256, 2),
            _up(320, 128, 2),
            _up(160, 64, 2),
        ])
        self.output_block = nn.Sequential(
            ConvUnit(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, audio_mels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        time_steps = faces.shape[2] if faces.dim() == 5 else 0
        if time_steps:
            audio_mels = audio_mels.flatten(0, 1)
            faces = faces.transpose(1, 2).flatten(0, 1)
        seed = self.audio_encoder(audio_mels)
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = seed
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        out = self.output_block(x)
        if time_steps:
            out = out.unflatten(0, (-1, time_steps)).transpose(1, 2)
        return out
