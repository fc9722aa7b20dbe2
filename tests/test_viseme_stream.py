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


async def test_a_viseme_socket_session_rests_and_sends_its_voice_ahead_where_its_cues_say(media_server):
    """Over the WebSocket: silent and still, the clock wakes once a second (the keep-alive tick).
    Asked to speak, each chunk's cues come and then its voice in one message, before the chunk
    plays; the ticks stay silent and rare. The voice messages follow one another without a gap, the
    first at the media time of the utterance's first cues (the tick promised to the speaker while
    the clock was resting), and the voice heard there is loud where the cues open the mouth."""
    import asyncio
    import json

    import aiohttp

    from tracks.face_stream import KIND_TICK, KIND_VOICE, TICK_HEADER, VOICE_HEADER

    base_url, _ = media_server
    ticks: list[tuple[float, int, float, int]] = []  # (arrival, tick, media time, audio samples)
    voices: list[tuple[float, str, float, np.ndarray]] = []  # (arrival, utterance, media time, int16 audio)
    events: list[tuple[float, dict]] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url + "/sessions", json={"listen": False, "visemes": True}) as resp:
            made = await resp.json()
        auth = {"Authorization": f"Bearer {made['token']}"}
        path = f"{base_url}/sessions/{made['session_id']}"
        ws = await http.ws_connect(f"{path}/ws?token={made['token']}")

        async def read() -> None:
            loop = asyncio.get_running_loop()
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    data = message.data
                    if data[0] == KIND_TICK:
                        _, _, _, tick, media_time, *_, samples = TICK_HEADER.unpack_from(data)
                        ticks.append((loop.time(), tick, media_time, samples))
                    elif data[0] == KIND_VOICE:
                        _, _, size, media_time, rate, samples, id_bytes = VOICE_HEADER.unpack_from(data)
                        assert rate == 24_000 and size % 2 == 0 and len(data) == size + 2 * samples
                        uid = data[VOICE_HEADER.size:VOICE_HEADER.size + id_bytes].decode()
                        voices.append((loop.time(), uid, media_time, np.frombuffer(data[size:], dtype="<i2")))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    events.append((asyncio.get_running_loop().time(), json.loads(message.data)))

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(3.3)
            async with http.get(path, headers=auth) as resp:
                stats = (await resp.json())["stats"]
            idle = list(ticks)
            assert 2 <= len(idle) <= 5, f"{len(idle)} tick messages in 3.3 s of silence"
            assert stats["rested_ticks"] >= 60 and stats["ticks"] >= 75, stats

            async with http.post(path + "/say", json={"text": "Peter Piper picked a peck of pickled peppers."},
                                 headers=auth) as resp:
                uid = (await resp.json())["utterance_id"]
            for _ in range(200):
                if any(e.get("type") == "speech_end" and e.get("utterance_id") == uid for _, e in events):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no speech_end")
            async with http.get(path, headers=auth) as resp:
                talked = (await resp.json())["stats"]
        finally:
            reader.cancel()
            await ws.close()
            # The server is shared with other tests: free the slot now, not after --idle-session-s.
            async with http.delete(path, headers=auth) as resp:
                assert resp.status == 204
    fps, rate = 25, 24_000
    assert all(samples == 0 for *_, samples in ticks), "a viseme session's ticks carry no audio"
    talking_s = (talked["ticks"] - stats["ticks"]) / fps
    assert len(ticks) - len(idle) <= talking_s + 3, f"{len(ticks) - len(idle)} tick messages in {talking_s:.1f} s"

    cue_events = [(t, e) for t, e in events if e.get("type") == "visemes" and e["utterance_id"] == uid]
    mine = [v for v in voices if v[1] == uid]
    assert len(mine) == len(cue_events) >= 1, (len(mine), len(cue_events))
    # Each chunk: its cues first, then its voice, from the same media time; the chunks follow on.
    for (cue_at, cue), (voice_at, _, start, _) in zip(cue_events, mine):
        assert cue_at <= voice_at and cue["start"] == pytest.approx(start, abs=1e-6)
    for (_, _, start, audio), (_, _, following, _) in zip(mine, mine[1:]):
        assert start + len(audio) / rate == pytest.approx(following, abs=1e-6), "a gap or overlap between chunks"
    # Ahead of playback: the server's clock, read from the ticks' arrival (arrival - media time
    # is smallest for the least delayed tick), had not reached a chunk's start when it arrived.
    offset = min(arrival - media_time for arrival, _, media_time, _ in ticks)
    lead = [start - (arrival - offset) for arrival, _, start, _ in mine]
    assert min(lead) > 0, f"voice arrived {min(lead) * 1000:.0f} ms after its media time"

    # The voice, laid on its media time, is loud where the cues open the mouth and quiet where
    # they close it (10 ms windows), and its loud stretch spans the voiced cues.
    t0 = mine[0][2]
    voice = np.concatenate([audio for *_, audio in mine]).astype(float)
    window = rate // 100
    rms = np.sqrt((voice[: len(voice) // window * window].reshape(-1, window) ** 2).mean(axis=1))
    times = t0 + (np.arange(len(rms)) + 0.5) / 100
    cues = [c for _, e in cue_events for c in e["cues"]]
    voiced = [c for c in cues if c["v"] != "sil"]
    in_voiced = np.array([any(c["start"] <= t < c["end"] for c in voiced) for t in times])
    assert rms[in_voiced].mean() > 4 * rms[~in_voiced].mean(), "the voice does not follow its cues"
    loud = times[rms > 1000]
    assert abs(loud[0] - voiced[0]["start"]) < 0.1 and voiced[-1]["end"] - 0.3 < loud[-1] < voiced[-1]["end"] + 0.05, \
        (loud[0], loud[-1], voiced[0], voiced[-1])
