"""Bad input gets a clear 4xx JSON error and breaks nothing."""
from __future__ import annotations

import asyncio

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


async def test_session_routes_check_the_token(http, peer):
    url = f"{peer.base_url}/sessions/{peer.session_id}/say"
    status, body = await post(http, url, json={"text": "hi"})
    assert status == 401 and "Bearer" in body["error"]
    status, body = await post(http, url, json={"text": "hi"}, headers={"Authorization": "Bearer wrong"})
    assert status == 404 and "token is not this session's" in body["error"]
    for text, fragment in [("", "empty"), ("   ", "empty"), ("x" * 5000, "limit"), (42, "string")]:
        status, body = await peer.request("POST", f"/sessions/{peer.session_id}/say", json={"text": text})
        assert status == 400 and fragment in body["error"], (text, body)
    status, body = await peer.request("POST", f"/sessions/{peer.session_id}/say", data=b"x" * 400_000)
    assert status == 413 and "too large" in body["error"]
    # the session survived all of it
    status, body = await peer.request("GET", f"/sessions/{peer.session_id}")
    assert status == 200 and body["session_id"] == peer.session_id


@pytest.mark.parametrize("avatar", ["../../etc/passwd", "two words", "x" * 65, "caf\u00e9"])
async def test_avatar_names_outside_the_store_alphabet_are_400_and_not_echoed(media_server, http, avatar):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/offer", json={"sdp": "v=0", "type": "offer", "avatar": avatar})
    assert status == 400 and body["error"].startswith("avatar:") and avatar not in body["error"], body


@pytest.mark.parametrize("raw", [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 40_000 + b"1" + b"}" * 40_000],
                         ids=["arrays", "objects"])
async def test_deeply_nested_json_is_400(media_server, http, raw):
    base_url, _ = media_server
    status, body = await post(http, base_url + "/offer", data=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and "nested too deeply" in body["error"]


async def test_a_body_shorter_than_its_content_length_is_408_not_a_hung_connection(media_server, media_config):
    base_url, _ = media_server
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"sdp\": ")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), media_config.body_timeout_s + 5)
        assert b" 408 " in status_line, status_line
    finally:
        writer.close()


async def test_text_and_uploads_a_voice_cannot_use_are_4xx_and_the_session_lives(peer, media_config):
    say = f"/sessions/{peer.session_id}/say"
    # NUL, another control character, and a lone surrogate (valid JSON, not valid text)
    for raw in [b'{"text": "hi\\u0000there"}', b'{"text": "a\\u0007b"}', b'{"text": "\\ud800"}']:
        status, body = await peer.request("POST", say, data=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and "cannot be spoken" in body["error"], (raw, body)
    status, body = await peer.request("POST", f"/sessions/{peer.session_id}/speak_audio", data=b"--x\r\n",
                                   headers={"Content-Type": "multipart/form-data"})
    assert status == 400 and "boundary" in body["error"], body
    # Queued speech is capped per session.
    limit = media_config.max_queued_utterances
    statuses = []
    for _ in range(limit + 2):
        statuses.append((await peer.request("POST", say, json={"text": "A long sentence to keep it busy. " * 4}))[0])
    assert statuses[:limit] == [202] * limit and statuses[limit:] == [429, 429], statuses
    status, body = await peer.request("POST", f"/sessions/{peer.session_id}/interrupt")
    assert status == 200 and len(body["interrupted"]) == limit
    uid = await peer.say("Still here.")
    assert (await peer.speech_end(uid))["interrupted"] is False


async def test_a_bad_data_channel_message_is_an_error_event_and_the_peer_stays(peer):
    await peer.wait_media()
    for raw in ["[" * 100_000, '{"type": "say", "text": "\\u0000"}', "not json", '{"type": "dance"}']:
        peer.channel.send(raw)
        await peer.wait_new_event(lambda e: e.get("type") == "error", timeout=10)
    peer.channel.send('{"type": "say", "text": "I am still connected."}')
    start = await peer.wait_event(lambda e: e.get("type") == "speech_start", timeout=30)
    assert (await peer.speech_end(start["utterance_id"]))["interrupted"] is False


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
