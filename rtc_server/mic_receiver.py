"""Less delay between the user's microphone packets arriving and the VAD hearing them.

aiortc gives every audio receiver a jitter buffer that holds 4 Opus packets (80 ms) before it
lets the oldest one go to the decoder (aiortc/rtcrtpreceiver.py: JitterBuffer(capacity=16,
prefetch=4)). For the microphone that is 60 ms added to every end of turn and every barge-in,
and buys little: a packet is only released once a later one has arrived anyway, and the VAD
does not care about an occasional late 20 ms. aiortc has no setting for it, so the buffer is
swapped for one with prefetch 1 through the receiver's private (name-mangled) attribute,
before the first packet arrives. An aiortc without that attribute keeps its default.
"""
from __future__ import annotations

import logging
import warnings

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

log = logging.getLogger(__name__)

MIC_PREFETCH = 1  # packets held back: 1 hands a packet over as soon as the next one shows it complete
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"  # RTCRtpReceiver.__jitter_buffer, name-mangled


def shorten_mic_jitter_buffer(pc: RTCPeerConnection, track: MediaStreamTrack, prefetch: int = MIC_PREFETCH) -> bool:
    """Make the receiver of `track` (the user's mic) release packets after `prefetch` more.

    Call it when the track appears (pc "track" event), before media flows. Returns False,
    with one warning per process (Python's default warning filter), where this aiortc has
    no such buffer; the receiver then keeps aiortc's default.
    """
    receiver = next((t.receiver for t in pc.getTransceivers()
                     if t.receiver is not None and t.receiver.track is track), None)
    current = getattr(receiver, _JITTER_BUFFER, None)
    if not isinstance(current, JitterBuffer):
        warnings.warn("this aiortc version has no RTCRtpReceiver jitter buffer to shorten: the microphone "
                      "keeps aiortc's default receive delay (~80 ms)", RuntimeWarning, stacklevel=2)
        return False
    setattr(receiver, _JITTER_BUFFER, JitterBuffer(capacity=current.capacity, prefetch=prefetch))
    log.debug("mic receiver: jitter buffer prefetch %d", prefetch)
    return True
