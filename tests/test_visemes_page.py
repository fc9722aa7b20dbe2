"""static/visemes.html in a real Chromium: a face drawn in the browser from the viseme stream, its
mouth moving with the voice it plays; the session behind it renders no video."""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from tests import needs
from tests.test_browser import CHROMIUM_FLAGS, DESKTOP

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None

OPEN = {"sil": 0, "PP": 0, "FF": 0.1, "TH": 0.22, "DD": 0.25, "kk": 0.32, "CH": 0.2, "SS": 0.12, "nn": 0.25,
        "RR": 0.28, "aa": 0.9, "E": 0.55, "ih": 0.3, "oh": 0.55, "ou": 0.25}
TEXT = "Peter Piper picked a peck of pickled peppers. A bad cat sat on a mat, and the band played on."


@pytest.fixture
async def chromium():
    driver = await async_api.async_playwright().start()
    browser = await driver.chromium.launch(executable_path=str(needs.CHROMIUM), args=CHROMIUM_FLAGS)
    yield browser
    await browser.close()
    await driver.stop()


async def speak_and_collect(page, text: str) -> dict:
    await page.wait_for_function("() => window.visemeClient && visemeClient.state === 'idle'", timeout=30_000)
    await page.evaluate("(t) => visemeClient.say(t)", text)
    await page.wait_for_function("() => visemeClient.events.some(e => e.type === 'speech_end')", timeout=30_000)
    await asyncio.sleep(0.3)
    return await page.evaluate("""() => ({applied: visemeClient.applied, cues: visemeClient.cueLog(),
        base: visemeClient.base, latency: visemeClient.audio.outputLatency, loudness: visemeClient.loudness,
        events: visemeClient.events, sessionId: visemeClient.sessionId, token: visemeClient.token,
        bytes: visemeClient.bytes, ticks: visemeClient.ticks})""")


def best_lag_ms(page: dict) -> tuple[float, float]:
    """Lag (ms) at which the mouth opening the page applied best matches the loudness of what it
    played, both on the audio clock (positive: the mouth late); and that correlation."""
    applied = page["applied"]
    loud = np.array(page["loudness"])
    start, end = loud[0, 0], loud[-1, 0]
    grid = np.arange(start, end, 0.005)
    times = np.array([a[1] for a in applied])
    opening = np.array([OPEN[a[2]] * a[3] for a in applied])
    index = np.searchsorted(times, grid, side="right") - 1
    mouth = np.where(index >= 0, opening[np.clip(index, 0, None)], 0.0)
    voice = np.interp(grid, loud[:, 0], loud[:, 1])
    voice = (voice - voice.mean()) / (voice.std() or 1)
    mouth = (mouth - mouth.mean()) / (mouth.std() or 1)
    lags = range(-40, 41)  # steps of 5 ms: +-200 ms
    scores = [float(np.mean(mouth[max(0, k):len(mouth) + min(0, k)] * voice[max(0, -k):len(voice) - max(0, k)]))
              for k in lags]
    best = int(np.argmax(scores))
    return lags[best] * 5.0, scores[best]


async def test_the_mouth_drawn_in_the_page_follows_the_cues_and_the_voice(media_server, chromium):
    base_url, app = media_server
    page = await (await chromium.new_context(viewport=DESKTOP)).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base_url + "/visemes?listen=false")
    got = await speak_and_collect(page, TEXT)
    assert not errors, errors

    # The cues came before their sound: each `visemes` event arrived (audio clock) before its
    # start was heard.
    ahead = [got["base"] + e["start"] + got["latency"] - e["clock"] for e in got["events"] if e["type"] == "visemes"]
    assert ahead and min(ahead) > 0.05, f"cues arrived {ahead} s before their sound"

    # Each cue (long enough for an animation frame to see it) was applied within 40 ms of its start.
    applied = got["applied"]
    lags = []
    for cue in got["cues"]:
        if cue["end"] - cue["start"] < 0.025 or cue["v"] == "sil":
            continue
        hits = [a[0] for a in applied if a[2] == cue["v"] and a[3] == cue["w"] and cue["start"] - 0.001 <= a[0] < cue["end"]]
        lags.append((hits[0] - cue["start"]) if hits else None)
    shown = [lag for lag in lags if lag is not None]
    assert len(shown) >= 0.9 * len(lags) and len(lags) >= 20, f"{len(shown)} of {len(lags)} cues applied"
    assert max(shown) <= 0.040, f"cues applied up to {max(shown) * 1000:.0f} ms late"

    # And against the voice itself: the opening of the drawn mouth lines up with the loudness of
    # the audio the page played, on the audio clock.
    lag, score = best_lag_ms(got)
    print(f"visemes: {len(shown)}/{len(lags)} cues applied, max {max(shown) * 1000:.0f} ms after their start; "
          f"mouth vs voice best lag {lag:+.0f} ms (correlation {score:.2f}); {got['bytes']} bytes in {got['ticks']} ticks")
    assert score > 0.3, f"the mouth does not follow the voice (best correlation {score:.2f})"
    assert abs(lag) <= 40, f"the mouth is {lag:+.0f} ms off the voice"

    # The session drew nothing: the cue renderer, no face pictures on the socket.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/sessions/{got['sessionId']}",
                            headers={"Authorization": f"Bearer {got['token']}"}) as resp:
            state = await resp.json()
    assert state["renderer"] == "CueRenderer"
    (socket,) = [o for o in state["outputs"] if o["type"] == "websocket"]
    assert socket["stats"]["jpeg_bytes"] < 2000, socket["stats"]  # one blank 16x16 picture


async def test_a_glb_with_viseme_morph_targets_is_driven_by_the_cues(media_server, chromium):
    """A model from another server (CORS allowed), loaded by the vendored three.js GLTFLoader."""
    from aiohttp import web

    from tests.glb import mouth_glb

    base_url, _ = media_server
    model = mouth_glb()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=model, headers={"Content-Type": "model/gltf-binary", "Access-Control-Allow-Origin": "*"})

    app = web.Application()
    app.router.add_get("/mouth.glb", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    glb_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mouth.glb"
    try:
        page = await (await chromium.new_context(viewport=DESKTOP)).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base_url}/visemes?listen=false&glb={glb_url}")
        await page.wait_for_function("() => window.visemeClient && (visemeClient.model || visemeClient.modelError)",
                                     timeout=30_000)
        loaded = await page.evaluate("() => visemeClient.modelError || ({oculus: visemeClient.model.oculus,"
                                     " names: visemeClient.model.names, webgl: visemeClient.model.webgl,"
                                     " error: visemeClient.model.webglError})")
        assert isinstance(loaded, dict), loaded
        assert loaded["oculus"] and "viseme_aa" in loaded["names"], loaded
        await page.wait_for_function("() => visemeClient.state === 'idle'", timeout=30_000)
        await page.evaluate("(t) => visemeClient.say(t)", TEXT)
        # (sampling from the voice's start: on a busy machine synthesis alone can take a second)
        await page.wait_for_function("() => visemeClient.events.some(e => e.type === 'speech_start')",
                                     timeout=30_000)
        samples = []
        for _ in range(40):  # while it speaks: the model shows the viseme being heard, alone
            await asyncio.sleep(0.05)
            samples.append(await page.evaluate("() => ({current: visemeClient.model.current, shown: visemeClient.model.shown})"))
        speaking = [s for s in samples if s["current"] not in (None, "sil")]
        assert len(speaking) >= 10, samples
        names = {"ih": "viseme_I", "oh": "viseme_O", "ou": "viseme_U"}
        for s in speaking:
            expected = names.get(s["current"], f"viseme_{s['current']}")
            assert list(s["shown"]) == [expected], s
        print(f"GLB: webgl {loaded['webgl']} {loaded['error'] or ''}; {len(speaking)} samples while speaking")
        assert not errors, errors
    finally:
        await runner.cleanup()
