"""Who may call what: the API key, other sites' pages, avatar writes, and ids that tell nothing."""
from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from tests.conftest import start_server
from tests.rtc_client import AvatarClient

# A real server and real peers: the full tier.
pytestmark = pytest.mark.slow

KEY = "k3y-for-tests"
FRIEND = "http://friend.example:8000"


@pytest.fixture(scope="module")
async def keyed_server(media_config, media_models):
    config = dataclasses.replace(media_config, api_key=KEY, allowed_origins=FRIEND)
    base_url, app, server = await start_server(config, media_models, conversation=False)
    yield base_url, app
    await server.close()


async def call(method: str, url: str, **kw) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, dict(resp.headers)


PROTECTED = [("POST", "/offer", {"json": {"sdp": "v=0", "type": "offer"}}),
             ("POST", "/sessions", {"json": {"outputs": "none"}}),
             ("POST", "/avatars?name=someone", {"data": b"\x89PNG"}),
             ("GET", "/avatars/jobs/abc", {}),
             ("GET", "/metrics", {})]


@pytest.mark.parametrize("method, path, kw", PROTECTED)
async def test_every_protected_route_needs_the_key(keyed_server, method, path, kw):
    base_url, _ = keyed_server
    status, body, _ = await call(method, base_url + path, **kw)
    assert status == 401 and "X-API-Key" in body["error"], (path, body)
    status, body, _ = await call(method, base_url + path, headers={"X-API-Key": "wrong"}, **kw)
    assert status == 401, (path, body)
    status, body, _ = await call(method, base_url + path, headers={"X-API-Key": KEY}, **kw)
    assert status != 401, (path, status, body)  # past the key: the route's own answer


async def test_with_the_key_a_session_runs_and_its_token_alone_controls_it(keyed_server):
    base_url, _ = keyed_server
    c = AvatarClient(base_url, api_key=KEY)
    await c.connect()
    try:
        await c.wait_media()
        uid = await c.say("The key let me in.")  # session routes need the session token, not the key
        assert (await c.speech_end(uid))["interrupted"] is False
    finally:
        await c.close()
    health, _, _ = await call("GET", base_url + "/healthz")
    assert health == 200  # health stays open for load balancers


async def test_pages_of_other_sites_are_refused_and_allowed_ones_get_cors(keyed_server):
    base_url, _ = keyed_server
    offer = {"sdp": "v=0", "type": "offer"}
    status, body, _ = await call("POST", base_url + "/offer", json=offer,
                                 headers={"Origin": "http://evil.example", "X-API-Key": KEY})
    assert status == 403 and "--allowed-origins" in body["error"]
    # A no-cors form post (text/plain) from any page: refused before it is read as an offer.
    status, body, _ = await call("POST", base_url + "/offer", data=b'{"sdp": "v=0", "type": "offer"}',
                                 headers={"Content-Type": "text/plain", "X-API-Key": KEY})
    assert status == 415 and "application/json" in body["error"]
    status, _, headers = await call("OPTIONS", base_url + "/offer", headers={
        "Origin": FRIEND, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == FRIEND
    assert "X-API-Key" in headers["Access-Control-Allow-Headers"]
    status, body, headers = await call("POST", base_url + "/offer", json=offer,
                                       headers={"Origin": FRIEND, "X-API-Key": KEY})
    assert status == 400 and "SDP" in body["error"]  # through to the handler, which reads the offer
    assert headers["Access-Control-Allow-Origin"] == FRIEND
    # The server's own page (same host and port) needs no setting.
    status, body, _ = await call("POST", base_url + "/offer", json=offer, headers={"Origin": base_url, "X-API-Key": KEY})
    assert status == 400 and "SDP" in body["error"]


async def test_unknown_and_foreign_session_ids_answer_alike(peer):
    live, unknown = f"{peer.base_url}/sessions/{peer.session_id}", f"{peer.base_url}/sessions/0123456789abcdef"
    foreign = await call("GET", live, headers={"Authorization": "Bearer nope"})
    assert foreign[:2] == (await call("GET", unknown, headers={"Authorization": "Bearer nope"}))[:2]
    assert foreign[0] == 404
    no_token = await call("GET", live)
    assert no_token[:2] == (await call("GET", unknown))[:2] and no_token[0] == 401


async def test_the_default_avatar_is_never_replaced_by_an_upload(media_server, media_config):
    base_url, _ = media_server
    for query in (f"name={media_config.avatar}", f"name={media_config.avatar}&overwrite=1"):
        status, body, _ = await call("POST", f"{base_url}/avatars?{query}", data=b"\x89PNG not really")
        assert status == 409 and "default avatar" in body["error"], body


@pytest.mark.parametrize("host, uploads, key, allowed", [
    ("127.0.0.1", "auto", None, True),
    ("0.0.0.0", "auto", None, False),
    ("0.0.0.0", "auto", KEY, True),
    ("127.0.0.1", "off", None, False),
    ("0.0.0.0", "on", None, True),
])
def test_avatar_writes_are_off_by_default_beyond_loopback(media_config, host, uploads, key, allowed):
    from rtc_server.access import AccessPolicy

    config = dataclasses.replace(media_config, host=host, avatar_uploads=uploads, api_key=key)
    assert AccessPolicy.from_config(config).avatar_writes is allowed
