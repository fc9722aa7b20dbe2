"""Peers that vanish free their slot in seconds: killed browsers, and offers never connected."""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import aiohttp
import pytest

from tests.conftest import ROOT, start_server
from tests.rtc_client import AvatarClient


@pytest.fixture(scope="module")
async def small_server(media_config, media_models):
    config = dataclasses.replace(media_config, max_sessions=2, connect_timeout_s=3.0)
    base_url, app, server = await start_server(config, media_models, conversation=False)
    yield base_url, app, config
    await server.close()


async def wait_sessions(app, count: int, timeout: float) -> float:
    """Seconds until the server holds `count` sessions (fails after timeout)."""
    from rtc_server.app import SESSIONS

    start = time.monotonic()
    while len(app[SESSIONS]) != count:
        assert time.monotonic() - start < timeout, f"{len(app[SESSIONS])} sessions, expected {count}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow  # real peers in other processes against a real server
async def test_killed_peers_free_their_slots_within_5_s(small_server):
    base_url, app, config = small_server
    await wait_sessions(app, 0, 20)
    peers = [subprocess.Popen([sys.executable, "-m", "tests.vanishing_peer", base_url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(config.max_sessions)]
    try:
        for peer in peers:
            assert await asyncio.to_thread(peer.stdout.readline) == "connected\n"
        await wait_sessions(app, config.max_sessions, 5)
        late = AvatarClient(base_url)
        with pytest.raises(RuntimeError, match="503"):
            await late.connect()
        await late.close()
        for peer in peers:
            peer.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        freed = await wait_sessions(app, 0, 10)
        print(f"slots freed {freed:.1f} s after the peers were killed")
        assert freed < 5.0, f"dead peers held their slots {freed:.1f} s"
        newcomer = AvatarClient(base_url)
        await newcomer.connect()
        try:
            await newcomer.wait_media()
            assert time.monotonic() - killed < 7.0
        finally:
            await newcomer.close()
    finally:
        for peer in peers:
            peer.kill()
            peer.wait()


@pytest.mark.slow
async def test_an_offer_never_connected_frees_its_slot_after_the_connect_timeout(small_server):
    base_url, app, config = small_server
    await wait_sessions(app, 0, 20)
    # A real offer whose peer never takes the answer, so it never starts ICE.
    async with aiohttp.ClientSession() as http:
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(base_url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as resp:
            assert resp.status == 200
        await pc.close()  # before it ever sent a connectivity check
    await wait_sessions(app, 1, 1)
    gone = await wait_sessions(app, 0, config.connect_timeout_s + 3)
    assert gone <= config.connect_timeout_s + 1.5


# ---- the silence rule on a fake clock (fast tier) -------------------------------------------


class FakePeer:
    """Just enough of an RTCPeerConnection: one DTLS transport whose received count we set."""

    class Transport:
        def __init__(self, peer: "FakePeer") -> None:
            self.peer = peer

        def _get_stats(self) -> dict:
            return {"t": SimpleNamespace(packetsReceived=self.peer.received)}

    def __init__(self) -> None:
        self.received = 0
        self.sctp = None
        self._sender = SimpleNamespace(transport=self.Transport(self))

    def getSenders(self):
        return [self._sender]

    def getReceivers(self):
        return [self._sender]


async def silence_after(script) -> tuple[float, float]:
    """Run wait_for_silence on fake time; script(t, peer) may bump peer.received and return an extra stall."""
    from rtc_server.peer_watch import wait_for_silence

    peer, clock = FakePeer(), {"t": 0.0}

    async def sleep(seconds: float) -> None:
        clock["t"] += seconds + (script(clock["t"], peer) or 0.0)

    silence = await wait_for_silence(peer, 4.0, now=lambda: clock["t"], sleep=sleep)
    return silence, clock["t"]


async def test_a_peer_that_stops_sending_is_declared_gone_after_the_timeout():
    def script(t, peer):
        if t < 10.0:  # RTCP every second, then nothing (the tab was killed at 10 s)
            peer.received += 1

    silence, at = await silence_after(script)
    assert 4.0 <= silence < 4.6 and 14.0 <= at < 15.1


async def test_a_stall_of_this_process_is_not_taken_for_a_silent_peer():
    def script(t, peer):
        if 5.0 <= t < 5.5:
            return 6.0  # the event loop is held 6 s; what arrived meanwhile is counted only later
        if t < 20.0:
            peer.received += 1

    silence, at = await silence_after(script)
    assert at >= 24.0, f"declared gone at {at:.1f} s, during or right after the stall"
