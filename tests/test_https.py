"""HTTPS with the self-signed certificate of `--tls self-signed`: Chromium, trusting it by its SPKI
pin only (as a phone whose user accepted it would), loads the page from the machine's LAN address,
where browsers give the microphone to secure pages only, speaks, and is answered."""
from __future__ import annotations

import pytest

from rtc_server.tls import lan_addresses, self_signed, server_context, spki_pin
from tests import needs
from tests.test_browser import CHROMIUM_FLAGS, DESKTOP, ClientPage, spoken_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs.chromium, needs.playwright, needs.espeak_ng]
try:
    from playwright import async_api
except ImportError:  # the marks above skip, or under CI fail, every test here
    async_api = None


async def test_the_page_over_https_gets_the_microphone_and_is_answered(listen_config, listen_models, tmp_path):
    from aiohttp.test_utils import TestServer

    from rtc_server.app import make_app

    # A LAN address when the machine has one: there, plain HTTP would get no microphone at all.
    address = next((a for a in lan_addresses() if not a.startswith("127.")), "127.0.0.1")
    cert, key = self_signed(tmp_path / "tls", [address], ["localhost"])
    app = make_app(listen_config, listen_models)
    server = TestServer(app, host=address, port=0)
    await server.start_server(ssl=server_context(cert, key))
    base_url = f"https://{address}:{server.port}"
    wav = spoken_wav(tmp_path / "question.wav", "What is the capital of Germany?", lead_s=1.5, tail_s=2.0)
    driver = await async_api.async_playwright().start()
    browser = await driver.chromium.launch(executable_path=str(needs.CHROMIUM), args=CHROMIUM_FLAGS + [
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        f"--ignore-certificate-errors-spki-list={spki_pin(cert.read_bytes())}"])
    try:
        page = ClientPage(await (await browser.new_context(viewport=DESKTOP)).new_page())
        await page.page.goto(base_url + "/?autoconnect=1&raw=1")
        assert await page.js("() => window.isSecureContext && location.protocol === 'https:'")
        await page.connected()
        transcript = await page.until("c.events.find(e => e.type === 'transcript' && e.final)", 60,
                                      what="the final transcript")
        assert "germany" in transcript["text"].lower(), transcript
        reply = await page.until("c.events.find(e => e.type === 'reply' && e.final)", 30, what="the reply")
        assert "germany" in reply["text"].lower()
        await page.js("() => window.avatarClient.disconnect()")
    finally:
        await browser.close()
        await driver.stop()
        await server.close()


def test_a_self_signed_certificate_covers_its_addresses_and_is_reused(tmp_path):
    from cryptography import x509

    cert, key = self_signed(tmp_path, ["127.0.0.1", "192.0.2.7"], ["localhost"])
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "192.0.2.7"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert key.stat().st_mode & 0o077 == 0  # the private key is the owner's alone
    assert self_signed(tmp_path, ["192.0.2.7", "127.0.0.1"], ["localhost"]) == (cert, key)
