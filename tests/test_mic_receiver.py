"""The microphone's receiver hands packets to the decoder without aiortc's 80 ms prefetch."""
from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from rtc_server.mic_receiver import _JITTER_BUFFER, shorten_mic_jitter_buffer


def opus_packet(n: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n, payload=b"\x00")
    packet._data = packet.payload  # what the receiver's depayloader leaves for the jitter buffer
    return packet


def packets_until_first_release(buffer) -> int:
    for n in range(1, 17):
        _, frame = buffer.add(opus_packet(n))
        if frame is not None:
            assert frame.timestamp == 960  # the first packet comes out first
            return n
    raise AssertionError("the jitter buffer released nothing")


async def test_mic_packets_are_released_as_soon_as_the_next_one_arrives():
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="sendrecv").receiver
        # aiortc's default: the first packet leaves only once four more have arrived (80 ms).
        assert packets_until_first_release(getattr(receiver, _JITTER_BUFFER)) == 5
        assert shorten_mic_jitter_buffer(pc, receiver.track)
        assert packets_until_first_release(getattr(receiver, _JITTER_BUFFER)) == 2
    finally:
        await pc.close()


async def test_an_aiortc_without_the_buffer_keeps_its_default_and_says_so():
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="sendrecv").receiver
        delattr(receiver, _JITTER_BUFFER)  # as a future aiortc might name or build it differently
        with pytest.warns(RuntimeWarning, match="jitter buffer"):
            assert not shorten_mic_jitter_buffer(pc, receiver.track)
        assert not hasattr(receiver, _JITTER_BUFFER)
    finally:
        await pc.close()
