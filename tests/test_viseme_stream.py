"""The viseme stream over WebRTC: a real aiortc peer asks for "visemes": true in its offer and
gets the voice on the audio track, the mouth cues on the data channel ahead of it, and no video
worth the name (the server renders nothing)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.rtc_client import AvatarClient

pytestmark = pytest.mark.slow


async def test_cues_come_on_the_data_channel_ahead_of_the_voice_on_the_audio_track(media_server):
    base_url, _ = media_server
    client = AvatarClient(base_url)
    try:
        await client.connect(visemes=True)
        await client.wait_media()
        assert client.received.video_size == (16, 16)  # a blank stand-in: nothing is rendered
        uid = await client.say("Peter Piper picked a peck of pickled peppers.")
        await client.speech_end(uid)
        cue_events = [(t, e) for t, e in client.events if e["type"] == "visemes" and e["utterance_id"] == uid]
        started = next(t for t, e in client.events if e["type"] == "speech_start" and e["utterance_id"] == uid)
        assert cue_events and cue_events[0][0] < started, "the first cues must come before the speech starts"
        cues = [c for _, e in cue_events for c in e["cues"]]
        assert {c["v"] for c in cues} >= {"PP", "ih", "aa"}
        assert all(0 <= c["id"] <= 14 and c["end"] > c["start"] and 0 <= c["w"] <= 1 for c in cues)
        assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(cues, cues[1:])), "cues overlap"
        # The cue timeline spans the voice: media time of the first and last cue against the audio
        # track's loud stretch (pts are samples since the track's start, tick 0 of the clock).
        r = client.received
        loud = [p / 48_000 for p, chunk in zip(r.audio_pts, r.audio_chunks) if np.abs(chunk.astype(int)).max() > 2000]
        voiced = [c for c in cues if c["v"] != "sil"]
        # (the voice's quiet last sibilant is under the loudness threshold: the end is a bound)
        assert abs(loud[0] - voiced[0]["start"]) < 0.1 and voiced[-1]["end"] - 0.3 < loud[-1] < voiced[-1]["end"] + 0.05, \
            (loud[0], loud[-1], voiced[0], voiced[-1])
    finally:
        await client.close()
