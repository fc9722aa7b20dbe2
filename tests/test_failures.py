"""A model failing mid-sentence: the session reports it and goes on; other sessions never notice."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.conftest import start_server
from tests.rtc_client import AvatarClient

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


class VoiceThatBreaks:
    """The real voice, except that texts mentioning 'explode' fail after their first sentence.

    An injected failure (what a user never runs), wrapped around the real model.
    """

    def __init__(self, voice) -> None:
        self.voice = voice

    def synthesize(self, text: str):
        chunks = self.voice.synthesize(text)
        yield next(chunks)
        if "explode" in text:
            raise RuntimeError("voice model crashed (injected)")
        yield from chunks


@pytest.fixture(scope="module")
async def fragile_server(media_config, media_models):
    bundle = dataclasses.replace(media_models, tts=VoiceThatBreaks(media_models.tts))
    base_url, app, server = await start_server(media_config, bundle, conversation=False)
    yield base_url
    await server.close()


async def test_tts_failing_mid_utterance_is_reported_and_nobody_else_notices(fragile_server):
    victim, bystander = AvatarClient(fragile_server), AvatarClient(fragile_server)
    await victim.connect()
    await bystander.connect()
    try:
        await asyncio.gather(victim.wait_media(), bystander.wait_media())
        calm = await bystander.say("I am a calm sentence. I keep talking through it all. Nothing bothers me.")
        broken = await victim.say("This first sentence is fine. Then the voice will explode here.")
        error = await victim.wait_event(lambda e: e.get("type") == "error", timeout=30)
        assert "voice model crashed" in error["message"] and "tts" in error["message"]
        await victim.speech_end(broken, 30)  # what was rendered still ends cleanly
        end = await bystander.speech_end(calm, 60)
        assert end["interrupted"] is False
        assert not [e for _, e in bystander.events if e.get("type") == "error"]
        # the victim's session is still alive and speaks again
        again = await victim.say("Still here.")
        end = await victim.speech_end(again, 30)
        assert end["interrupted"] is False
        status, stats = await bystander.request("GET", f"/sessions/{bystander.session_id}")
        assert status == 200 and stats["state"] == "idle"
    finally:
        await victim.close()
        await bystander.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_model_that_fails_its_start_up_check_is_named_with_the_fix(tmp_path):
    """`python run.py` with a local LLM that cannot run: the server stays up, and the log,
    /healthz and /offer all name the model that failed and what to do, instead of dying silently."""
    import os
    import subprocess
    import sys
    import time

    import aiohttp

    from tests.conftest import ROOT

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    port = _free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "run.py", "--port", str(port), "--llm", "local",
                                   "--llm-model", str(broken)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = None
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert server.poll() is None, log_path.read_text()[-3000:]
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        health = (resp.status, await resp.json())
                except aiohttp.ClientConnectionError:
                    health = None
                if health and "failed" in health[1].get("error", ""):
                    break
                await asyncio.sleep(0.5)
            assert health is not None and health[0] == 503, health
            message = health[1]["error"]
            assert "LLM (local) failed to load" in message and "broken.gguf" in message, message
            assert "--llm echo" in message, f"the fix is missing: {message}"
            async with http.post(f"http://127.0.0.1:{port}/offer", json={"sdp": "v=0", "type": "offer"}) as resp:
                assert resp.status == 503 and "broken.gguf" in (await resp.json())["error"]
        assert server.poll() is None, "the server died"
        assert "broken.gguf failed its start-up check" in log_path.read_text()
    finally:
        server.terminate()
        server.wait(timeout=10)
