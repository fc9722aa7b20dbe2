"""Avatar uploads too large to decode are refused from their headers, before Pillow or FFmpeg
decodes a pixel (fast tier; the HTTP answer is checked in tests/test_avatar_api.py style below)."""
from __future__ import annotations

import io
import time
import tracemalloc

import av
import numpy as np
import pytest
from PIL import Image

from models.avatar.prepare import PrepareError, prepare, refuse_huge_image
from models.avatar.store import AvatarStore


def huge_png() -> bytes:
    """12000 x 12000 pixels in a few hundred KB (one bit per pixel, all alike)."""
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")
    return out.getvalue()


def big_video() -> bytes:
    """One 5120 x 2880 frame of MPEG-4 video."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 5120, 2880, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((2880 * 3 // 2, 5120), np.uint8), format="yuv420p")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def test_a_huge_image_is_refused_from_its_header_without_decoding_it():
    data = huge_png()
    assert len(data) < 1_000_000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(PrepareError) as refused:
        refuse_huge_image(data, "huge.png")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert refused.value.reason == "too_large" and "12000x12000" in str(refused.value)
    assert peak < 20_000_000 and elapsed < 1.0, (peak, elapsed)  # decoding would take 144 MB and seconds


def test_prepare_refuses_a_huge_image_and_never_hands_it_to_ffmpeg(tmp_path, monkeypatch):
    opened: list[str] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append("ffmpeg") or real_open(*a, **k))
    with pytest.raises(PrepareError) as refused:
        prepare(huge_png(), "huge", AvatarStore(tmp_path))
    assert refused.value.reason == "too_large" and opened == []


def test_a_video_with_frames_over_4k_is_refused_before_decoding(tmp_path):
    with pytest.raises(PrepareError) as refused:
        prepare(big_video(), "big", AvatarStore(tmp_path))
    assert refused.value.reason == "too_large" and "5120x2880" in str(refused.value)
    assert not list(tmp_path.iterdir()) or not any(p.name == "big" for p in tmp_path.iterdir())


@pytest.mark.slow
async def test_an_upload_of_a_huge_image_is_a_413_and_live_sessions_do_not_skip_a_tick(media_server):
    import asyncio

    import aiohttp

    from rtc_server.app import SESSIONS
    from tests.rtc_client import AvatarClient

    base_url, app = media_server
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_media()
        stats = app[SESSIONS][client.session_id].stream.stats
        skipped = stats.skipped_ticks
        frames = len(client.received.video_times)
        async with aiohttp.ClientSession() as http:
            async with http.post(base_url + "/avatars?name=huge", data=huge_png(),
                                 headers={"Content-Type": "image/png"}) as resp:
                answer = await resp.json()
        assert resp.status == 413 and "12000x12000" in answer["error"], answer
        await asyncio.sleep(1.0)
        assert stats.skipped_ticks == skipped  # (late ticks depend on the machine's load; none was given up)
        assert len(client.received.video_times) - frames >= 20
    finally:
        await client.close()
