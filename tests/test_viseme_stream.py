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


async def test_an_idle_viseme_socket_session_rests_and_its_speech_lands_where_its_cues_say(media_server):
    """Over the WebSocket: silent and still, the clock wakes once a second (the keep-alive tick);
    asked to speak, it ticks every frame again, and the voice's first tick is the media time of
    the utterance's cues (the tick promised to the speaker while the clock was resting)."""
    import asyncio
    import json

    import aiohttp

    from tracks.face_stream import FLAG_SPEECH, TICK_HEADER

    base_url, _ = media_server
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url + "/sessions", json={"listen": False, "visemes": True}) as resp:
            made = await resp.json()
        auth = {"Authorization": f"Bearer {made['token']}"}
        path = f"{base_url}/sessions/{made['session_id']}"
        ws = await http.ws_connect(f"{path}/ws?token={made['token']}")
        ticks: list[tuple[float, int, float, bool]] = []  # (arrival, tick, media time, speech)
        events: list[dict] = []

        async def read() -> None:
            loop = asyncio.get_running_loop()
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    _, flags, _, tick, media_time, *_ = TICK_HEADER.unpack_from(message.data)
                    ticks.append((loop.time(), tick, media_time, bool(flags & FLAG_SPEECH)))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(message.data))

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
                if any(e.get("type") == "speech_end" and e.get("utterance_id") == uid for e in events):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no speech_end")
        finally:
            reader.cancel()
            await ws.close()
            # The server is shared with other tests: free the slot now, not after --idle-session-s.
            async with http.delete(path, headers=auth) as resp:
                assert resp.status == 204
    speech = [t for t in ticks[len(idle):] if t[3]]
    numbers = [t[1] for t in speech]
    # (a tick of digital silence inside the utterance, a renderer underrun, sends nothing)
    assert len(numbers) > 50 and numbers == sorted(set(numbers)) and numbers[-1] - numbers[0] < len(numbers) + 5, \
        "the voice's ticks come in order, every one (the clock no longer rests)"
    assert all(media_time == pytest.approx(tick / 25) for _, tick, media_time, _ in speech)
    first_cues = next(e for e in events if e.get("type") == "visemes" and e["utterance_id"] == uid)
    assert first_cues["start"] == pytest.approx(speech[0][2], abs=1e-6), \
        f"cues placed at {first_cues['start']} s, the voice starts at {speech[0][2]} s"
