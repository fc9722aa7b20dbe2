"""A user's own audio, played with lip-sync read from the audio (no phoneme timings)."""
from __future__ import annotations

import pytest

import io
import wave

import numpy as np

from tests.test_media_session import audio_between, client, frames_between, mouth_box, rms  # noqa: F401

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


def syllables_wav(seconds: float = 2.0, rate: int = 22_050) -> bytes:
    """Voice-like bursts: a 180 Hz buzz with harmonics, on for 150 ms, off for 100 ms."""
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 8))
    gate = ((t % 0.25) < 0.15).astype(np.float64)
    pcm = (buzz * gate * 6000).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


async def test_uploaded_wav_plays_with_a_moving_mouth(client, media_models):
    path = f"/sessions/{client.session_id}/speak_audio"
    status, body = await client.request("POST", path, data=syllables_wav(),
                                        headers={"Content-Type": "audio/wav"})
    assert status == 202 and abs(body["duration_s"] - 2.0) < 0.05
    uid = body["utterance_id"]
    start = await client.wait_event(lambda e: e.get("type") == "speech_start" and e["utterance_id"] == uid)
    end = await client.speech_end(uid)
    t0 = next(t for t, e in client.events if e is start)
    t1 = next(t for t, e in client.events if e is end)
    assert 1.8 < t1 - t0 < 2.6
    assert rms(audio_between(client, t0 + 0.1, t1 - 0.1)) > 1000
    rows, cols = mouth_box(media_models)
    r = client.received
    idx = frames_between(r.video_times, t0 + 0.1, t1 - 0.1)
    change = [np.abs(r.video_luma[i][rows, cols].astype(np.float32) - r.video_luma[i - 1][rows, cols]).mean()
              for i in idx]
    assert np.mean(change) > 1.5, "the mouth should follow the audio"


async def test_bad_audio_uploads_are_refused(client):
    path = f"/sessions/{client.session_id}/speak_audio"
    for data, status_expected, fragment in [(b"", 400, "empty"), (b"RIFF-not-really-a-wav" * 10, 400, "WAV")]:
        status, body = await client.request("POST", path, data=data,
                                            headers={"Content-Type": "audio/wav"})
        assert status == status_expected and fragment in body["error"], body
    status, body = await client.request("GET", f"/sessions/{client.session_id}")
    assert status == 200
