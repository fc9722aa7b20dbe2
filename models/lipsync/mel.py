"""The Wav2Lip audio front end: 16 kHz audio -> normalised 80-bin log-mel (80 frames/s) -> per-frame windows.

The recipe is the one the public checkpoints were trained with: preemphasis 0.97, a
centred STFT (n_fft 800, hop 200, periodic Hann window of 800, reflect padding), magnitude
through an 80-band Slaney mel filterbank (55-7600 Hz, area-normalised), dB re 20 dB, then
mapped from [-100, 0] dB onto [-4, 4] and clipped.
"""
from __future__ import annotations

import numpy as np
import soxr

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 80
WINDOW_FRAMES = 16  # mel frames the net sees per video frame (200 ms)

# Slaney mel scale: linear up to 1 kHz, logarithmic above.
_LIN_STEP_HZ = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LIN_STEP_HZ
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel value of each frequency in Hz."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _LIN_STEP_HZ
    high = hz >= _LOG_START_HZ
    return np.where(high, _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of hz_to_mel."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _LIN_STEP_HZ
    high = mel >= _LOG_START_MEL
    return np.where(high, _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL)), hz)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular filters, equally spaced in Slaney mel, each of unit area per Hz."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return bank.astype(np.float32)


def to_16k_float(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 (or float in [-1, 1]) mono audio at any rate -> float32 at 16 kHz."""
    wav = np.asarray(audio)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {wav.shape}; mix down to one channel first")
    wav = wav.astype(np.float32) / 32768.0 if wav.dtype == np.int16 else wav.astype(np.float32)
    if sample_rate != SAMPLE_RATE and len(wav):
        wav = soxr.resample(wav, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return wav


class MelFrontEnd:
    """Computes Wav2Lip's normalised log-mel spectrogram; holds the filterbank and window."""

    def __init__(self) -> None:
        self._bank = mel_filterbank()
        # Periodic Hann (the FFT-friendly variant the training STFT used).
        self._window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(80, n) float32 in [-4, 4] for `audio` at `sample_rate`; n = 1 + samples_at_16k // 200."""
        return self.from_16k(to_16k_float(audio, sample_rate))

    def from_16k(self, wav: np.ndarray) -> np.ndarray:
        """Same as calling the front end, for float audio already at 16 kHz."""
        wav = np.asarray(wav, dtype=np.float32)
        emphasised = np.empty_like(wav)
        if len(wav):
            emphasised[0] = wav[0]
            emphasised[1:] = wav[1:] - PREEMPHASIS * wav[:-1]
        half = N_FFT // 2
        # Reflect padding needs more samples than the pad; very short clips get zeros instead.
        mode = "reflect" if len(wav) > half else "constant"
        padded = np.pad(emphasised, half, mode=mode)
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
        magnitude = np.abs(np.fft.rfft(frames * self._window, axis=1)).astype(np.float32)
        mel = self._bank @ magnitude.T
        db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
        scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
        return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_windows(mel: np.ndarray, n_frames: int, fps: float = 25) -> np.ndarray:
    """(n_frames, 1, 80, 16): for video frame i, the 16 mel frames from int(i * 80 / fps).

    Windows that would run past the end are clamped to the last 16 frames; a mel shorter
    than 16 frames is first padded on the right with silence (-4).
    """
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise ValueError(f"expected a mel of shape ({N_MELS}, n), got {mel.shape}")
    if n_frames < 0 or fps <= 0:
        raise ValueError(f"n_frames must be >= 0 and fps > 0 (got {n_frames}, {fps})")
    if mel.shape[1] < WINDOW_FRAMES:
        mel = np.pad(mel, ((0, 0), (0, WINDOW_FRAMES - mel.shape[1])), constant_values=-MAX_ABS_VALUE)
    last_start = mel.shape[1] - WINDOW_FRAMES
    step = MEL_FRAMES_PER_SECOND / fps
    starts = np.minimum((np.arange(n_frames) * step).astype(np.int64), last_start)
    index = starts[:, None] + np.arange(WINDOW_FRAMES)[None, :]
    windows = mel[:, index]  # (80, n_frames, 16)
    return np.ascontiguousarray(windows.transpose(1, 0, 2)[:, None], dtype=np.float32)
