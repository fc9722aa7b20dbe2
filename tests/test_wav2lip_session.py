"""The neural renderer streams a whole session on CPU from a checkpoint file the test writes."""
from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from tests.conftest import start_server
from tests.rtc_client import AvatarClient
from tests.test_wav2lip import _random_state, _save

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def wav2lip_server(tmp_path_factory, media_config, media_models):
    from models.bundle import build_renderer

    checkpoint = _save(_random_state(seed=3), tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth")
    config = dataclasses.replace(media_config, renderer="wav2lip", checkpoint=checkpoint, device="cpu")
    renderer = build_renderer(config, "cpu")
    bundle = dataclasses.replace(media_models, renderers={config.avatar: renderer})
    base_url, app, server = await start_server(config, bundle, conversation=False)
    from models.avatar.photo import load_avatar

    yield base_url, renderer, load_avatar(config.avatar).face_box
    await server.close()


async def test_wav2lip_session_speaks_with_a_changing_lower_face(wav2lip_server):
    base_url, renderer, face_box = wav2lip_server
    client = AvatarClient(base_url, keep_video=True)
    await client.connect()
    try:
        await client.wait_media()
        uid = await client.say("Hello from the neural renderer.")
        start = await client.wait_event(lambda e: e.get("type") == "speech_start" and e["utterance_id"] == uid,
                                        timeout=60)
        end = await client.speech_end(uid, 60)
        assert end["interrupted"] is False
        t0 = next(t for t, e in client.events if e is start)
        t1 = next(t for t, e in client.events if e is end)
        r = client.received
        audio = [c for t, c in zip(r.audio_times, r.audio_chunks) if t0 + 0.1 < t < t1 - 0.1]
        assert np.sqrt(np.mean(np.concatenate(audio).astype(np.float64) ** 2)) > 800
        # the clock kept time even though the CPU renders far below 25 fps
        times = np.array(r.video_times)
        span = times[(times > t0) & (times < t1)]
        assert len(span) / (t1 - t0) > 20
        x0, y0, x1, y1 = face_box
        mid = (y0 + y1) // 2
        idle = renderer.idle_frame(0)[: renderer.height]
        frames = [r.video_luma[i] for i, t in enumerate(r.video_times) if t0 + 0.1 < t < t1 - 0.1]
        lower = [np.abs(f[mid:y1, x0:x1].astype(np.float32) - idle[mid:y1, x0:x1]).mean() for f in frames]
        assert max(lower) > 8, "the neural renderer should redraw the lower face while speaking"
        await asyncio.sleep(0.5)
    finally:
        await client.close()
