"""Noticing a peer that vanished. A closed tab, a killed browser or a lost network sends
nothing at all, while a live peer sends RTCP reports about what it receives (every second or
so) and, when it talks, its microphone: silence on every transport means it is gone, long
before ICE consent freshness gives up (~30 s)."""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiortc import RTCPeerConnection


def packets_received(pc: RTCPeerConnection) -> int:
    """Datagrams received so far on the connection's DTLS transports (RTP, RTCP, data channel)."""
    transports = {x.transport for x in [*pc.getSenders(), *pc.getReceivers()] if x.transport is not None}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    total = 0
    for transport in transports:
        # aiortc 1.16 counts them in the transport's own stats, read without the cost of getStats().
        for stats in transport._get_stats().values():
            total += getattr(stats, "packetsReceived", 0) or 0
    return total


async def wait_for_silence(pc: RTCPeerConnection, silence_s: float, poll_s: float = 0.5,
                           now: Callable[[], float] = time.monotonic,
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> float:
    """Return once nothing has arrived from the peer for `silence_s`; returns how long it was."""
    last, heard, polled = -1, now(), now()
    while True:
        await sleep(poll_s)
        received, t = packets_received(pc), now()
        if t - polled > 3 * poll_s:
            # This process stalled: what the peer sent meanwhile may not be counted yet.
            heard = t
        polled = t
        if received != last:
            last, heard = received, t
        elif t - heard >= silence_s:
            return t - heard
