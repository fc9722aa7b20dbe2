"""The face stream's messages, without a server: the voice message's layout, and a viseme
session's silent ticks (its voice goes ahead, so a talking tick is as still as an idle one)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from tracks.avframe import AVFrame
from tracks.face_stream import KIND_VOICE, VOICE_HEADER, FaceStreamEncoder, FaceTick, downsample, voice_message


@pytest.mark.parametrize("uid", ["s-1", "abcdef0123456789-12", "é"])
def test_a_voice_message_reads_back_with_its_samples_on_an_even_byte(uid):
    audio = (np.sin(np.arange(960) / 7) * 20_000).astype(np.int16)
    message = voice_message(uid, 12.48, audio, 24_000)
    kind, flags, size, media_time, rate, samples, id_bytes = VOICE_HEADER.unpack_from(message)
    assert (kind, flags, media_time, rate, samples) == (KIND_VOICE, 0, 12.48, 24_000, 960)
    assert size % 2 == 0 and size >= VOICE_HEADER.size + id_bytes and len(message) == size + 2 * samples
    assert message[VOICE_HEADER.size:VOICE_HEADER.size + id_bytes].decode() == uid
    assert np.array_equal(np.frombuffer(message[size:], dtype="<i2"), audio)


def test_downsampling_keeps_each_ticks_share_of_samples():
    pcm = np.arange(1920, dtype=np.int16)
    assert len(downsample(pcm, 2)) == 960 and downsample(pcm, 2)[10] == 20  # mean of 20 and 21, truncated
    assert downsample(pcm, 1) is pcm


def talk(carries_audio: bool, expect: int, ticks: int = 60) -> list[FaceTick]:
    """Speaking frames (a loud tone, the same blank picture every tick) through an encoder: what it
    delivered once `expect` messages came (or 5 s passed), and 0.2 s more for any extra."""
    delivered: list[FaceTick] = []
    encoder = FaceStreamEncoder(16, 16, 25, 48_000, delivered.append, carries_audio=carries_audio, backlog=100)
    blank = np.full((24, 16), 16, dtype=np.uint8)
    tone = (np.sin(np.arange(1920) / 5) * 10_000).astype(np.int16)
    try:
        for tick in range(ticks):
            encoder.push(tick, AVFrame(video=blank, audio=tone, utterance_id="u"))
        deadline = time.monotonic() + 5
        while len(delivered) < expect and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        encoder.close()
    return delivered


def test_a_talking_tick_carries_its_audio_unless_the_voice_went_ahead():
    every = talk(carries_audio=True, expect=60)
    assert [t.tick for t in every] == list(range(60)) and all(len(t.audio) == 960 and t.audio.any() for t in every)
    silent = talk(carries_audio=False, expect=3)
    # The first picture, then the once-a-second keep-alive: 60 ticks at 25 fps are 3 messages.
    assert [t.tick for t in silent] == [0, 25, 50] and all(len(t.audio) == 0 for t in silent)
