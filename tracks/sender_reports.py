"""RTCP sender reports that state when a frame was due on the media clock, not when it left.

Browsers line audio up with video by mapping each stream's RTP timestamps to the sender's
NTP time through the (NTP, RTP) pair in its RTCP sender reports. aiortc fills that pair with
the *send* time of the last packet, so whatever delays one track before sending (a video
encode waiting for a busy core) is invisible to the browser and turns 1:1 into lip-sync error,
and the pair jitters by a few milliseconds on every report, which keeps the browser's
synchroniser hunting. Here the pair says "this RTP timestamp belongs to the frame due at
t0 + tick/fps", the same clock for both tracks, so both streams map onto one timeline exactly.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import aiortc
from aiortc import RTCRtpSender, clock

log = logging.getLogger(__name__)

NTP_FRACTION = 1 << 32
_NTP_ATTR = "_RTCRtpSender__ntp_timestamp"


class DueTimeSource(Protocol):
    """A track that remembers the due time of the last frame it handed to its sender."""

    last_due: float | None


def ntp_at(monotonic_time: float) -> int:
    """The 64-bit NTP timestamp of a moment given on time.monotonic()'s clock."""
    ago = time.monotonic() - monotonic_time
    return clock.current_ntp_time() - int(ago * NTP_FRACTION)


def report_due_times(sender: RTCRtpSender, track: DueTimeSource) -> bool:
    """Make `sender`'s RTCP sender reports use the due time of each frame `track` hands out.

    aiortc keeps the report pair in private fields written after each packet; the sender's
    loop awaits `_next_encoded_frame` between frames, and the report task can only run while
    it waits there. So on entry (every packet of the previous frame sent, the RTP timestamp
    field holding that frame's timestamp) the NTP field is replaced by the frame's due time.
    Returns False, leaving aiortc's behaviour, if this aiortc has no such fields.
    """
    if not hasattr(sender, _NTP_ATTR) or not hasattr(sender, "_next_encoded_frame"):
        log.warning("aiortc %s has no sender-report fields to adjust; A/V sync falls back to send times",
                    getattr(aiortc, "__version__", "?"))
        return False
    encoded_frame: Callable[[Any], Awaitable[Any]] = sender._next_encoded_frame
    sent_due: list[float | None] = [None]  # due time of the last frame whose packets went out

    async def next_encoded_frame(codec: Any) -> Any:
        if sent_due[0] is not None:
            setattr(sender, _NTP_ATTR, ntp_at(sent_due[0]))
        frame = await encoded_frame(codec)
        # The encoders aiortc uses here (VP8 realtime without lag, Opus at 48 kHz) turn each
        # input frame into exactly one output frame, so this output belongs to the frame the
        # track just handed over.
        sent_due[0] = track.last_due if frame is not None else sent_due[0]
        return frame

    sender._next_encoded_frame = next_encoded_frame
    return True
