"""A page of another site, in a real Chromium, tries what the previous server let it do: make
sessions and upload avatars from its visitors' browsers (no-cors posts that skip preflights, and
ordinary CORS calls). None of it lands."""
from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web

from tests import needs
from tests.conftest import start_server
from tests.test_browser import CHROMIUM_FLAGS

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None

ATTACK = """
async (target) => {
  const tries = {};
  const attempt = async (name, run) => {
    try { const r = await run(); tries[name] = r.type === 'opaque' ? 'opaque' : r.status; }
    catch (e) { tries[name] = 'blocked: ' + e.name; }
  };
  const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  await attempt('offer no-cors', () => fetch(target + '/offer', {method: 'POST', mode: 'no-cors',
    headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({sdp: 'v=0', type: 'offer'})}));
  await attempt('sessions no-cors', () => fetch(target + '/sessions', {method: 'POST', mode: 'no-cors',
    headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({listen: false})}));
  await attempt('sessions cors', () => fetch(target + '/sessions', {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({listen: false})}));
  await attempt('avatar no-cors', () => fetch(target + '/avatars?name=intruder', {method: 'POST', mode: 'no-cors',
    body: png}));
  await attempt('avatar overwrite no-cors', () => fetch(target + '/avatars?name=astronaut&overwrite=1',
    {method: 'POST', mode: 'no-cors', body: png}));
  return tries;
}
"""


async def test_a_page_of_another_site_can_neither_make_sessions_nor_upload_avatars(media_config, media_models, tmp_path):
    from rtc_server.app import AVATARS, SESSIONS

    config = dataclasses.replace(media_config, avatar_dir=tmp_path)
    bundle = dataclasses.replace(media_models, renderers=dict(media_models.renderers))
    base_url, app, server = await start_server(config, bundle, conversation=False)
    other = web.Application()
    other.router.add_get("/", lambda request: web.Response(text="<!doctype html><title>elsewhere</title>",
                                                           content_type="text/html"))
    runner = web.AppRunner(other)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    elsewhere = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
    driver = await async_api.async_playwright().start()
    browser = await driver.chromium.launch(executable_path=str(needs.CHROMIUM), args=CHROMIUM_FLAGS)
    try:
        page = await browser.new_page()
        await page.goto(elsewhere)
        tries = await page.evaluate(ATTACK, base_url)
        print(f"from {elsewhere}: {tries}")
        assert tries["sessions cors"].startswith("blocked"), tries  # no CORS answer for a foreign origin
        assert not app[SESSIONS], "a session was made from another site's page"
        assert not app[AVATARS].jobs and not app[AVATARS].store.exists("intruder"), "an upload went through"
    finally:
        await browser.close()
        await driver.stop()
        await runner.cleanup()
        await server.close()
