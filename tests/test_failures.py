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
