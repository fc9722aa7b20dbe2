"""static/ws.html in a real Chromium: the face stream over a WebSocket, painted on a canvas in step
with audio scheduled through WebAudio; the voice conversation up the same socket."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests import needs
from tests.test_browser import DESKTOP, LONG_TEXT, launch, spoken_wav, write_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None

FRAME_S = 0.040


async def wait_js(page, expression: str, timeout_s: float, what: str):
    """Wait for a JS expression over `c` (window.wsClient) to be truthy; returns its value."""
    try:
        handle = await page.wait_for_function(f"() => {{ const c = window.wsClient; return c && ({expression}); }}",
                                              timeout=timeout_s * 1000, polling=100)
    except async_api.TimeoutError:
        state = await page.evaluate("() => { const c = window.wsClient; return c && {state: c.state, ticks: c.ticks,"
                                    " events: c.events.map(e => e.type + ':' + (e.state || e.text || e.utterance_id || e.message || ''))}; }")
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; page: {state}") from None
    return await handle.json_value()


@pytest.fixture
async def driver():
    d = await async_api.async_playwright().start()
    yield d
    await d.stop()


async def test_sync_test_beep_and_white_picture_land_on_the_same_tick(media_server, driver, tmp_path):
    base_url, _ = media_server
    chromium = await launch(driver, write_wav(tmp_path / "quiet.wav", __import__("numpy").zeros(24000, "int16")))
    try:
        page = await (await chromium.new_context(viewport=DESKTOP)).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(base_url + "/ws?mode=sync-test&listen=false")
        await wait_js(page, "c.state === 'live' || c.state === 'idle'", 30, "the socket to open")
        await asyncio.sleep(7.5)
        client = await page.evaluate("() => window.wsClient")
        flashes, beeps = client["flashes"], client["beeps"]
        offsets = []
        for flash in flashes:
            near = [b for b in beeps if abs(b - flash) < 0.5]
            if near:
                offsets.append(min(near, key=lambda b: abs(b - flash)) - flash)
        print(f"ws sync-test: {len(flashes)} flashes, {len(beeps)} beeps, beep minus paint (ms) "
              f"{[round(o * 1000, 1) for o in offsets]}, {client['bytes']} bytes in {client['ticks']} ticks")
        assert len(offsets) >= 3, (flashes, beeps)
        assert max(abs(o) for o in offsets) <= FRAME_S, offsets
        # (the dark silent ticks between the marks change nothing: one message a second is sent)
        assert client["ticks"] >= 7 and client["painted"] >= 3
        assert not errors, errors
    finally:
        await chromium.close()


@needs.espeak_ng
async def test_a_voice_question_over_the_socket_is_answered_and_talking_over_it_stops_it(
        conversation_server, driver, tmp_path):
    base_url, _ = conversation_server
    # A question, then (while the answer is being spoken) the user talks over it.
    wav = spoken_wav(tmp_path / "q.wav", "What is the capital of Germany?", lead_s=2.0, tail_s=1.0)
    chromium = await launch(driver, wav)
    try:
        page = await (await chromium.new_context(viewport=DESKTOP)).new_page()
        await page.goto(base_url + "/ws")
        transcript = await wait_js(page, "c.events.find(e => e.type === 'transcript' && e.final)", 60,
                                   "the final transcript")
        assert "germany" in transcript["text"].lower(), transcript
        reply = await wait_js(page, "c.events.find(e => e.type === 'reply' && e.final)", 30, "the reply")
        assert "germany" in reply["text"].lower(), reply
        await wait_js(page, "c.events.some(e => e.type === 'speech_end')", 30, "the spoken answer")
        session = await page.evaluate("() => ({id: window.wsClient.sessionId, token: window.wsClient.token})")
        assert (await page.evaluate("() => window.wsClient.micSent")) > 16000 * 2 * 2
    finally:
        await chromium.close()

    wav = spoken_wav(tmp_path / "barge.wav", "Stop, stop. Please wait a moment.", lead_s=6.0, tail_s=2.0)
    chromium = await launch(driver, wav)
    try:
        page = await (await chromium.new_context(viewport=DESKTOP)).new_page()
        await page.goto(base_url + "/ws")
        await wait_js(page, "c.state === 'idle' || c.state === 'live'", 30, "the socket to open")
        await page.evaluate("(t) => window.avatarSocket.send({type: 'say', text: t})", LONG_TEXT + " " + LONG_TEXT)
        start = await wait_js(page, "c.events.find(e => e.type === 'speech_start')", 20, "the avatar to talk")
        end = await wait_js(page, "c.events.find(e => e.type === 'speech_end')", 40, "the avatar to stop")
        assert end["utterance_id"] == start["utterance_id"]
        assert end["interrupted"] is True, "the avatar finished its text instead of stopping for the user"
        heard = await wait_js(page, "c.events.find(e => e.type === 'transcript' && e.final && /stop|wait/i.test(e.text))",
                              60, "the user's words")
        assert heard
    finally:
        await chromium.close()
    async with aiohttp.ClientSession() as http:  # the first page's session is still there to reconnect to
        async with http.get(f"{base_url}/sessions/{session['id']}",
                            headers={"Authorization": f"Bearer {session['token']}"}) as resp:
            assert resp.status == 200
