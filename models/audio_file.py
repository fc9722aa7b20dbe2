"""Decoding audio a user hands us (WAV and anything FFmpeg reads) into int16 mono PCM."""
from __future__ import annotations

import io

import av
import numpy as np


class AudioFileError(ValueError):
    """The bytes are not audio we can read; the message says what was expected."""


def decode_audio(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Decode a whole audio file in memory to int16 mono at `sample_rate`."""
    if not data:
        raise AudioFileError("the audio body is empty: send a WAV file")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioFileError(f"not a readable audio file ({exc.__class__.__name__}): send a WAV file") from None
    try:
        if not container.streams.audio:
            raise AudioFileError("the file has no audio stream: send a WAV file")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        pieces: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
                total += pieces[-1].size
            if total > limit:
                raise AudioFileError(f"the audio is longer than {max_seconds:.0f} s; send a shorter clip")
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise AudioFileError(f"the audio could not be decoded: {exc}") from None
    finally:
        container.close()
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
    if pcm.size == 0:
        raise AudioFileError("the file holds no audio samples")
    return pcm.astype(np.int16, copy=False)
