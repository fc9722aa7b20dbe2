"""The kiosk page, the JavaScript client library under it, and the widget on other sites, in a
real Chromium against real servers: starting by itself, coming back after the server restarts or
drops the peer, events in order, phone and portrait kiosk screens, and the origin setting."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests import needs
from tests.test_browser import SHOTS, launch, silent_mic  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None

KIOSK = {"width": 1080, "height": 1920}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def chromium(silent_mic):
    driver = await async_api.async_playwright().start()
    browser = await launch(driver, silent_mic)
    yield browser
    await browser.close()
    await driver.stop()


async def until(page, expression: str, timeout_s: float, what: str):
    try:
        handle = await page.wait_for_function(f"() => {expression}", timeout=timeout_s * 1000, polling=100)
    except async_api.TimeoutError:
        state = await page.evaluate("() => window.kiosk && {live: kiosk.live, connections: kiosk.connections.map(c => c.state),"
                                    " reconnects: kiosk.reconnects}")
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; kiosk: {state}") from None
    return await handle.json_value()


async def serve(app: web.Application, port: int = 0) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


async def layout(page) -> dict:
    return await page.evaluate("""() => { const v = document.getElementById('avatar').getBoundingClientRect();
        return {fit: getComputedStyle(document.getElementById('avatar')).objectFit, vw: innerWidth, vh: innerHeight, scrollW: document.documentElement.scrollWidth,
                scrollH: document.documentElement.scrollHeight, video: [v.left, v.top, v.width, v.height],
                painted: document.getElementById('avatar').videoWidth}; }""")


async def test_the_kiosk_starts_by_itself_and_is_back_within_10_s_of_a_server_restart(media_config, media_models, chromium):
    from rtc_server.app import make_app

    config = dataclasses.replace(media_config, max_sessions=2)
    server = await serve(make_app(config, media_models))
    port = server.port
    base_url = f"http://127.0.0.1:{port}"
    page = await (await chromium.new_context(viewport=KIOSK)).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base_url + "/kiosk")
    await until(page, "window.kiosk && kiosk.live", 30, "the kiosk to show the avatar by itself")
    await asyncio.sleep(0.5)  # the status line fades out
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "kiosk-1080x1920.png"))
    shown = await layout(page)
    assert shown["scrollW"] <= shown["vw"] and shown["scrollH"] <= shown["vh"], shown
    assert shown["video"] == [0, 0, shown["vw"], shown["vh"]] and shown["painted"] > 0, shown
    assert shown["fit"] == "cover", shown  # portrait: the picture fills the screen

    await server.close()  # the server goes away (its sessions end, the peer closes)
    await until(page, "!kiosk.live && document.body.classList.contains('offline')", 15, "the kiosk to notice")
    # Never a black screen: the last picture stays up while it reconnects.
    kept = await page.evaluate("""() => { const c = document.getElementById('backdrop');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let s = 0;
        for (let i = 0; i < d.length; i += 400) s += d[i] + d[i + 1] + d[i + 2]; return s; }""")
    assert kept > 0, "the screen went black while reconnecting"
    await asyncio.sleep(2.0)
    restarted = time.monotonic()
    server = await serve(make_app(config, media_models), port)
    try:
        await until(page, "kiosk.live", 10, "the avatar back within 10 s of the restart")
        back = time.monotonic() - restarted
        print(f"kiosk: back {back:.1f} s after the server restarted ({await page.evaluate('kiosk.reconnects')} reconnects)")
        assert back <= 10.0
        assert not errors, errors
    finally:
        await page.close()
        await server.close()


async def test_the_library_reconnects_when_the_server_drops_the_peer_and_keeps_events_in_order(media_server, chromium):
    base_url, app = media_server
    page = await (await chromium.new_context(viewport=PHONE)).new_page()
    await page.goto(base_url + "/kiosk?attract=600")
    await until(page, "window.kiosk && kiosk.live", 30, "the kiosk to go live")
    await asyncio.sleep(0.5)
    await page.screenshot(path=str(SHOTS / "kiosk-390x844.png"))
    shown = await layout(page)
    assert shown["scrollW"] <= shown["vw"] and shown["scrollH"] <= shown["vh"], shown
    first = await page.evaluate("kiosk.avatar.sessionId")
    token = await page.evaluate("kiosk.avatar.token")
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{base_url}/sessions/{first}", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 204
    second = await until(page, f"kiosk.live && kiosk.avatar.sessionId && kiosk.avatar.sessionId !== '{first}'"
                               " && kiosk.avatar.connection === 'connected' && kiosk.avatar.sessionId", 15,
                         "a new session after the server dropped the peer")
    assert second != first
    since = await page.evaluate("kiosk.events.length")
    for text in ("First sentence from the library test.", "And a second one after it."):
        await page.evaluate("(t) => kiosk.avatar.say(t)", text)
    await until(page, f"kiosk.events.slice({since}).filter(e => e.type === 'speech_end').length >= 2", 30,
                "both utterances to end")
    events = (await page.evaluate("kiosk.events"))[since:]
    speech = [(e["type"], e["utterance_id"]) for e in events if e["type"] in ("speech_start", "speech_end")]
    ids = list(dict.fromkeys(uid for _, uid in speech))
    assert len(ids) == 2 and speech == [("speech_start", ids[0]), ("speech_end", ids[0]),
                                        ("speech_start", ids[1]), ("speech_end", ids[1])], speech
    await page.evaluate("kiosk.avatar.disconnect()")
    await page.close()


def site(html: str) -> web.Application:
    other = web.Application()
    other.router.add_get("/", lambda request: web.Response(text=html, content_type="text/html"))
    return other


async def test_the_widget_answers_on_an_allowed_site_and_is_refused_elsewhere(listen_config, listen_models, chromium):
    from tests.conftest import start_server

    friend = await serve(site("<!doctype html><title>friend</title><p>A shop.</p>"))
    stranger = await serve(site("<!doctype html><title>stranger</title><p>Another site.</p>"))
    config = dataclasses.replace(listen_config, allowed_origins=f"http://127.0.0.1:{friend.port}")
    base_url, app, server = await start_server(config, listen_models)
    tag = (f'<script src="{base_url}/static/widget.js" data-greeting="Welcome to the shop." '
           f'data-color="#aa3355" data-position="bottom-left" data-size="320"></script>')
    try:
        for other, allowed in ((friend, True), (stranger, False)):
            page = await (await chromium.new_context(viewport=PHONE)).new_page()
            await page.goto(f"http://127.0.0.1:{other.port}/")
            await page.evaluate("""(tag) => { const d = document.createElement('div'); d.innerHTML = tag;
                const s = document.createElement('script'); const o = d.firstChild;
                for (const a of o.attributes) s.setAttribute(a.name, a.value); document.body.appendChild(s); }""", tag)
            await page.wait_for_function("() => window.avatarWidget", timeout=10_000)
            await page.evaluate("avatarWidget.open()")
            await asyncio.sleep(1.0)
            frame = next((f for f in page.frames if f.url.startswith(base_url + "/embed")), None)
            if not allowed:
                loaded = frame is not None and await frame.evaluate("() => !!window.embed").catch(lambda _: False) \
                    if frame is not None else False
                assert not loaded, "the widget's frame loaded on a site the server does not allow"
                await page.close()
                continue
            assert frame is not None, [f.url for f in page.frames]
            await frame.wait_for_function("() => window.embed && embed.avatar.connection === 'connected'", timeout=30_000)
            await frame.wait_for_function("() => embed.events.some(e => e.type === 'speech_end')", timeout=30_000)
            await frame.fill("#text", "Do you sell umbrellas?")
            await frame.press("#text", "Enter")
            reply = await frame.wait_for_function(
                "() => embed.events.find(e => e.type === 'reply' && e.final)", timeout=30_000)
            assert "umbrellas" in (await reply.json_value())["text"].lower()
            await page.screenshot(path=str(SHOTS / "widget-390x844.png"))
            box = await page.evaluate("""() => { const p = avatarWidget.host.shadowRoot.querySelector('.panel').getBoundingClientRect();
                return [p.left, p.top, p.right, p.bottom, innerWidth, innerHeight]; }""")
            assert 0 <= box[0] and box[2] <= box[4] and 0 <= box[1] and box[3] <= box[5], box  # inside the screen
            await frame.evaluate("embed.avatar.disconnect()")
            await page.close()
    finally:
        await server.close()
        await friend.close()
        await stranger.close()
