"""static/watch.html: hls.js (vendored) in a real Chromium plays a session's HLS output."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests import needs
from tests.test_browser import CHROMIUM_FLAGS

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None


async def test_hls_js_in_chromium_plays_a_live_session(media_server):
    base_url, _ = media_server
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url + "/sessions", json={"listen": False, "mode": "sync-test",
                                                           "outputs": [{"type": "hls"}]}) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        headers = {"Authorization": f"Bearer {answer['token']}"}
        (hls,) = answer["outputs"]
        driver = await async_api.async_playwright().start()
        browser = await driver.chromium.launch(executable_path=str(needs.CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            await page.goto(base_url + hls["watch"])
            await page.wait_for_function("() => window.watch && window.watch.state === 'playing'", timeout=30_000)
            first = await page.evaluate("() => window.watch.framesDecoded")
            await asyncio.sleep(4.0)
            watch = await page.evaluate("() => ({...window.watch, latency: window.hls && window.hls.latency,"
                                        " width: document.getElementById('video').videoWidth})")
            print(f"hls.js: {watch}")
            assert watch["framesDecoded"] - first >= 4.0 * 25 - 15, f"live playback stalled: {first} -> {watch}"
            assert watch["fragments"] >= 3 and watch["width"] > 0
            assert not errors, errors
            # Everything the page loaded came from this server (no CDN); hls.js makes its worker from a blob.
            foreign = [u for u in requests if not u.startswith((base_url, "blob:" + base_url))]
            assert not foreign, foreign
            # The playlist is answered once it names a segment: the player never sees an empty one.
            assert not any("levelEmpty" in e for e in watch["errors"]), watch["errors"]
            # Played without a stall (hls.js keeps enough of a margin behind the live edge).
            assert not any("Stalled" in e for e in watch["errors"]), watch["errors"]
        finally:
            await browser.close()
            await driver.stop()
            async with http.delete(f"{base_url}/sessions/{answer['session_id']}", headers=headers) as resp:
                assert resp.status == 204
