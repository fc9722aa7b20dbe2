"""Uploading a photo over HTTP makes an avatar that a session can pick by name."""
from __future__ import annotations

import asyncio
import dataclasses
import io

import aiohttp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_server
from tests.rtc_client import AvatarClient

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def avatar_server(tmp_path_factory, media_config, media_models):
    config = dataclasses.replace(media_config, avatar_dir=tmp_path_factory.mktemp("avatars"))
    bundle = dataclasses.replace(media_models, renderers=dict(media_models.renderers))
    base_url, app, server = await start_server(config, bundle, conversation=False)
    yield base_url
    await server.close()


def portrait_png() -> bytes:
    from skimage import data

    face = np.ascontiguousarray(np.fliplr(data.astronaut())[0:400, 60:460])  # a different 400x400 picture
    out = io.BytesIO()
    Image.fromarray(face).save(out, format="PNG")
    return out.getvalue()


async def wait_job(http: aiohttp.ClientSession, base_url: str, job_id: str) -> dict:
    for _ in range(300):
        async with http.get(f"{base_url}/avatars/jobs/{job_id}") as resp:
            job = await resp.json()
        if job["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise TimeoutError(job)


async def test_uploaded_photo_becomes_a_selectable_avatar(avatar_server):
    base_url = avatar_server
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/avatars?name=mirror", data=portrait_png()) as resp:
            assert resp.status == 202
            job = await resp.json()
        job = await wait_job(http, base_url, job["job_id"])
        assert job["state"] == "done" and job["avatar"]["width"] == 400, job
        async with http.get(f"{base_url}/avatars") as resp:
            names = [a["name"] for a in (await resp.json())["avatars"]]
        assert {"astronaut", "mirror"} <= set(names)
        async with http.post(f"{base_url}/avatars?name=mirror", data=portrait_png()) as resp:
            assert resp.status == 409 and "overwrite" in (await resp.json())["error"]
    client = AvatarClient(base_url)
    try:
        await client.connect(avatar="mirror")
        await client.wait_media()
        assert client.received.video_size == (400, 400)
        uid = await client.say("Hello from the mirror.")
        end = await client.speech_end(uid, 30)
        assert end["interrupted"] is False
    finally:
        await client.close()


@pytest.mark.parametrize("query, body, status, fragment", [
    ("name=bad%20name", b"x", 400, "name"),
    ("name=empty", b"", 400, "no file"),
])
async def test_bad_uploads_are_refused_at_once(avatar_server, query, body, status, fragment):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{avatar_server}/avatars?{query}", data=body) as resp:
            assert resp.status == status and fragment in (await resp.json())["error"]


async def test_a_file_without_a_face_fails_with_a_message_and_leaves_nothing(avatar_server):
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.coffee()).save(out, format="PNG")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{avatar_server}/avatars?name=coffee", data=out.getvalue()) as resp:
            job = await resp.json()
        job = await wait_job(http, avatar_server, job["job_id"])
        assert job["state"] == "failed" and "face" in job["error"], job
        async with http.get(f"{avatar_server}/avatars") as resp:
            assert "coffee" not in [a["name"] for a in (await resp.json())["avatars"]]


async def test_preparing_an_upload_leaves_live_sessions_at_25_fps(avatar_server):
    """Decoding, face finding and writing run in a process of their own: no tick is given up."""
    base_url = avatar_server
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_media()
        status, before = await client.request("GET", f"/sessions/{client.session_id}")
        frames = len(client.received.video_times)
        start = asyncio.get_running_loop().time()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/avatars?name=busy", data=portrait_png()) as resp:
                assert resp.status == 202
                job = await resp.json()
            job = await wait_job(http, base_url, job["job_id"])
        elapsed = asyncio.get_running_loop().time() - start
        assert job["state"] == "done", job
        status, after = await client.request("GET", f"/sessions/{client.session_id}")
        assert after["stats"]["skipped_ticks"] == before["stats"]["skipped_ticks"], (before["stats"], after["stats"])
        received = len(client.received.video_times) - frames
        assert received >= 25 * elapsed - 10, f"{received} frames in {elapsed:.1f} s of preparation"
    finally:
        await client.close()


async def test_a_preparation_over_its_memory_ceiling_fails_alone(tmp_path, media_config, media_models):
    """--prepare-memory-mb bounds the preparation process: over it, the job fails with a message
    and the server goes on (here a ceiling too low for the work at all)."""
    config = dataclasses.replace(media_config, avatar_dir=tmp_path, prepare_memory_mb=150)
    bundle = dataclasses.replace(media_models, renderers=dict(media_models.renderers))
    base_url, app, server = await start_server(config, bundle, conversation=False)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/avatars?name=tight", data=portrait_png()) as resp:
                job = await resp.json()
            job = await wait_job(http, base_url, job["job_id"])
            assert job["state"] == "failed" and ("prepare-memory-mb" in job["error"] or "died" in job["error"]), job
            async with http.get(f"{base_url}/healthz") as resp:
                assert resp.status == 200
    finally:
        await server.close()
