"""Per-client rate limits (fast tier): the token bucket on a fake clock, and the real access
middleware in a real aiohttp app refusing a client that loops on session starts."""
from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rtc_server.access import AccessPolicy, access_middleware
from rtc_server.config import Config
from rtc_server.rate_limit import RateLimiter


def test_a_burst_then_one_every_interval_per_client():
    t = [0.0]
    limiter = RateLimiter(per_minute=6, now=lambda: t[0])  # a burst of 6, then one every 10 s
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert round(limiter.take("a")) == 10  # the seventh waits
    assert limiter.take("b") == 0.0        # another client is not held up
    t[0] += 10.0
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    t[0] += 3600
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6  # never more than the burst saved up
    assert limiter.take("a") > 0
    assert RateLimiter(per_minute=0).take("a") == 0.0  # 0: off


def test_the_longest_quiet_clients_are_forgotten_first():
    limiter = RateLimiter(per_minute=60, max_clients=2)
    for client in ("a", "b", "c"):
        limiter.take(client)
    assert list(limiter._buckets) == ["b", "c"]


async def test_the_server_answers_429_with_retry_after_to_a_client_looping_on_offers():
    config = Config(sessions_per_min=3, uploads_per_min=1)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[access_middleware(AccessPolicy.from_config(config),
                                                         config.sessions_per_min, config.uploads_per_min)])
    app.router.add_post("/offer", ok)
    app.router.add_post("/sessions", ok)
    app.router.add_post("/avatars", ok)
    app.router.add_post("/sessions/{id}/say", ok)
    async with TestClient(TestServer(app)) as client:
        statuses = [(await client.post(path)).status for path in ("/offer", "/sessions", "/offer", "/offer")]
        assert statuses == [200, 200, 200, 429]
        refused = await client.post("/sessions")
        assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "too many new sessions" in (await refused.json())["error"]
        # Talking in a session is not limited; uploads have their own, stricter limit.
        assert [(await client.post("/sessions/x/say")).status for _ in range(5)] == [200] * 5
        assert [(await client.post("/avatars")).status for _ in range(2)] == [200, 429]
