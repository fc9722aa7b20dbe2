"""Shared fixtures: the real models, loaded once, and a real server on a free port."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rtc_server.config import Config  # noqa: E402
from tests.needs import require  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        require(mark.kwargs["found"], mark.kwargs["reason"])


@pytest.fixture(scope="session")
def detector():
    """dlib's face detector and 68-point predictor, loaded once."""
    from models.avatar.landmarks import LandmarkDetector

    return LandmarkDetector()


@pytest.fixture(scope="session")
def avatar(detector):
    """The built-in astronaut photo avatar with its landmarks."""
    from models.avatar.photo import load_default_avatar

    return load_default_avatar(detector)


@pytest.fixture(scope="session")
def media_config() -> Config:
    """Settings of the say-only server used by the media tests."""
    # A short body timeout so the test of a stalled body answers in seconds. No rate limits: the
    # whole suite connects from one address (tests/test_access.py tests the limits).
    return Config(port=0, max_sessions=3, listen=False, connect_timeout_s=15.0, body_timeout_s=3.0,
                  max_queued_utterances=6, sessions_per_min=0, uploads_per_min=0)


@pytest.fixture(scope="session")
def media_models(media_config):
    from models.bundle import load_models

    return load_models(media_config)


@pytest.fixture(scope="session")
async def media_server(media_config, media_models):
    """Base URL of a running say-only server (real app, real models)."""
    from aiohttp.test_utils import TestServer

    from rtc_server.app import make_app

    app = make_app(media_config, media_models)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", app
    await server.close()


@pytest.fixture
async def peer(media_server):
    """An aiortc client connected to the say-only server, closed after the test."""
    from tests.rtc_client import AvatarClient

    client = AvatarClient(media_server[0])
    await client.connect()
    yield client
    await client.close()


async def start_server(config: Config, bundle, conversation: bool = True):
    """A real server (app + models) on a free port; returns (base_url, app, server)."""
    from aiohttp.test_utils import TestServer

    from rtc_server.app import make_app

    app = make_app(config, bundle, conversation=conversation)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return f"http://127.0.0.1:{server.port}", app, server


@pytest.fixture(scope="session")
def listen_config(media_config) -> Config:
    return dataclasses.replace(media_config, listen=True, llm="echo")


@pytest.fixture(scope="session")
def listen_models(media_models, listen_config):
    """The media models plus VAD, ASR and the echo LLM."""
    from models.bundle import load_listening

    bundle = dataclasses.replace(media_models, timings=dict(media_models.timings))
    load_listening(bundle, listen_config)
    return bundle


@pytest.fixture(scope="session")
async def conversation_server(listen_config, listen_models):
    """Base URL and app of a listening server whose LLM is `echo`."""
    base_url, app, server = await start_server(listen_config, listen_models)
    yield base_url, app
    await server.close()


async def wait_no_sessions(app, timeout: float = 20.0) -> None:
    """Closed peers end their sessions shortly after (or at the connect timeout); wait for that."""
    import asyncio

    from rtc_server.app import SESSIONS

    for _ in range(int(timeout * 10)):
        if not app[SESSIONS]:
            return
        await asyncio.sleep(0.1)
