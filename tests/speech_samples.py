"""Test audio: real speech from espeak-ng (a different voice than the avatar's), noise, silence."""
from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

SAMPLE_RATE = 16000
# espeak-ng's female US variant: deliberately unlike the avatar's Piper voice.
TEST_VOICE = "en-us+f3"


def espeak(text: str, voice: str = TEST_VOICE, words_per_minute: int = 160, ssml: bool = False) -> np.ndarray:
    """text spoken by espeak-ng as float32 mono at 16 kHz (ssml: text is SSML, e.g. with <break>)."""
    import soxr

    from tests.needs import ESPEAK_REASON, require

    require(shutil.which("espeak-ng") is not None, ESPEAK_REASON)
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", *(["-m"] if ssml else []), text],
        capture_output=True, check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        # espeak writes a streaming header with a bogus length; read what is there.
        pcm = reader.readframes(reader.getnframes())
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def white_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * SAMPLE_RATE))) * rms).astype(np.float32)


def click(ms: float, amplitude: float = 0.6, freq_hz: float = 1000.0) -> np.ndarray:
    """A short loud tone burst: the kind of noise that must not count as a turn."""
    t = np.arange(int(ms * SAMPLE_RATE / 1000)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


def speech_bounds(audio: np.ndarray, floor: float = 0.01) -> tuple[float, float]:
    """First and last sample above floor, in seconds: where espeak's voice really starts/ends."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    if loud.size == 0:
        raise ValueError("no sound above the floor")
    return loud[0] / SAMPLE_RATE, loud[-1] / SAMPLE_RATE


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def mic_pcm(audio: np.ndarray, lead_s: float = 0.3, tail_s: float = 0.3, rate: int = 48_000) -> np.ndarray:
    """16 kHz speech as int16 PCM at `rate` for a fake microphone, with silence around it, at 0.8 of full scale."""
    import soxr

    speech = soxr.resample(audio, SAMPLE_RATE, rate).astype(np.float32)
    lead, tail = np.zeros(int(lead_s * rate), np.float32), np.zeros(int(tail_s * rate), np.float32)
    return (np.concatenate([lead, speech, tail]) * 32767 * 0.8).astype(np.int16)
