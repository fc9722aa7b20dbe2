"""A whole session through a real TURN relay (Debian's coturn): Chromium told to use relayed
candidates only (iceTransportPolicy "relay") receives the avatar at 25 fps and hears it speak;
the server hands out coturn's time-limited credentials (--turn-secret) and its own peer uses them."""
from __future__ import annotations

import dataclasses

import pytest

from tests import needs, turn_server
from tests.test_browser import DESKTOP, ClientPage, launch, silent_mic  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright,
              needs.tool(turn_server.available(), "needs coturn: apt-get install -y coturn")]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None


async def test_chromium_relayed_by_coturn_gets_25_fps_and_speech(media_config, media_models, tmp_path, silent_mic):
    from tests.conftest import start_server

    turn = turn_server.TurnServer(tmp_path)
    turn.start()
    config = dataclasses.replace(media_config, ice_server=(turn.url,), turn_secret=turn.secret)
    base_url, app, server = await start_server(config, media_models, conversation=False)
    driver = await async_api.async_playwright().start()
    browser = await launch(driver, silent_mic)
    try:
        page = ClientPage(await (await browser.new_context(viewport=DESKTOP)).new_page())
        await page.page.goto(base_url + "/?autoconnect=1&raw=1&relay=1")
        await page.connected(timeout_s=30)
        # Every candidate pair the page may use is relayed: its selected local candidate is coturn's.
        kind = await page.page.evaluate("""async () => {
            const stats = await window.avatarClient.pc.getStats();
            let pair = null;
            stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
            if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
            return pair && stats.get(pair.localCandidateId).candidateType;
        }""")
        assert kind == "relay", kind
        await page.until("c.stats && c.stats.fps >= 23", 20, what="25 fps through the relay")
        fps = await page.js("() => window.avatarClient.stats.fps")
        await page.page.fill("#text", "Hello through the relay. Can you hear me?")
        await page.page.click("#say")
        await page.until("c.events.find(e => e.type === 'speech_end')", 30, what="the spoken sentence")
        loud = await page.js("() => window.avatarClient.remoteLevel.maxPeak")
        print(f"through coturn: {fps:.1f} fps, speech peak {loud:.2f}")
        assert loud > 0.05, f"no audible speech through the relay (peak {loud})"
        assert "ALLOCATE" in turn.log().upper(), "coturn saw no allocation"
    finally:
        await browser.close()
        await driver.stop()
        await server.close()
        turn.stop()
