"""Bad input gets a clear 4xx JSON error and breaks nothing."""
from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import wait_no_sessions
from tests.rtc_client import AvatarClient

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def post(http, url, **kw):
    async with http.post(url, **kw) as resp:
        return resp.status, await resp.json()


async def test_malformed_sdp_is_400(media_server, http):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/offer", json={"sdp": "v=0\r\nthis is not sdp", "type": "offer"})
    assert status == 400 and "SDP" in body["error"]


@pytest.mark.parametrize("payload, fragment", [
    ({"type": "offer"}, "sdp"),
    ({"sdp": "x", "type": "answer"}, "type"),
    ({"sdp": "x", "type": "offer", "mode": "party"}, "mode"),
    ([1, 2], "JSON object"),
])
async def test_bad_offer_bodies_are_400(media_server, http, payload, fragment):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/offer", json=payload)
    assert status == 400 and fragment in body["error"]


async def test_not_json_is_400(media_server, http):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/offer", data=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400 and "JSON" in body["error"]


async def test_unknown_avatar_is_400(media_server, http):
    base_url, _ = media_server
    c = AvatarClient(base_url)
    try:
        with pytest.raises(RuntimeError, match="unknown avatar"):
            await c.connect(avatar="nobody")
    finally:
        await c.close()


async def test_unknown_session_is_404(media_server, http):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/sessions/nope/say", json={"text": "hi"},
                              headers={"Authorization": "Bearer x"})
    assert status == 404 and "unknown session" in body["error"]


async def test_session_routes_check_the_token(media_server, http):
    base_url, _ = media_server
    c = AvatarClient(base_url)
    await c.connect()
    try:
        url = f"{base_url}/sessions/{c.session_id}/say"
        status, body = await post(http, url, json={"text": "hi"})
        assert status == 401 and "Bearer" in body["error"]
        status, body = await post(http, url, json={"text": "hi"}, headers={"Authorization": "Bearer wrong"})
        assert status == 403 and "wrong token" in body["error"]
        for text, fragment in [("", "empty"), ("   ", "empty"), ("x" * 5000, "limit"), (42, "string")]:
            status, body = await c.request("POST", f"/sessions/{c.session_id}/say", json={"text": text})
            assert status == 400 and fragment in body["error"], (text, body)
        status, body = await c.request("POST", f"/sessions/{c.session_id}/say", data=b"x" * 400_000)
        assert status == 413 and "too large" in body["error"]
        # the session survived all of it
        status, body = await c.request("GET", f"/sessions/{c.session_id}")
        assert status == 200 and body["session_id"] == c.session_id
    finally:
        await c.close()


async def test_capacity_limit_is_503(media_server, media_config):
    base_url, app = media_server
    await wait_no_sessions(app)
    clients = []
    try:
        for _ in range(media_config.max_sessions):
            c = AvatarClient(base_url)
            clients.append(c)
            await c.connect()
        extra = AvatarClient(base_url)
        clients.append(extra)
        with pytest.raises(RuntimeError, match="503.*capacity"):
            await extra.connect()
    finally:
        for c in clients:
            await c.close()
        await wait_no_sessions(app)
