"""The avatar's voice as Opus packets, encoded on the clock's thread as each tick is pushed.

aiortc encodes every 20 ms audio frame in its thread pool: a hand-off to a worker and a wake-up
of the event loop 50 times a second per session, after turning the mono voice into 96 kbit/s
stereo. Coding a 20 ms mono packet here costs libopus about 0.2 ms (0.1 ms for silence), and
aiortc's sender then only packetizes it. An idle avatar sends digital silence, which libopus
codes as the same 3 bytes every packet once it has settled, so that packet is reused instead.
Together with say-only sessions not receiving the microphone, an idle session went from 17.4 %
to 11.7 % of a core (two servers side by side, one idle client each, same 8 s windows).
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
OPUS_FRAME_SECONDS = (0.0025, 0.005, 0.010, 0.020, 0.040, 0.060)
BITRATE = 64_000  # mono voice; Piper's 22 kHz voice is transparent well below this
SETTLED = 3       # silent packets encoded before the repeated one is reused


def opus_frame_ok(sample_rate: int, packet_samples: int) -> bool:
    """Whether libopus takes `packet_samples` mono samples at `sample_rate` as one frame."""
    return sample_rate in OPUS_RATES and any(
        packet_samples == round(sample_rate * seconds) for seconds in OPUS_FRAME_SECONDS)


class OpusPacketizer:
    """Encodes fixed-size mono s16 chunks into Opus packets stamped with their sample position."""

    def __init__(self, sample_rate: int, packet_samples: int, bitrate: int = BITRATE) -> None:
        if not opus_frame_ok(sample_rate, packet_samples):
            raise ValueError(f"Opus cannot code {packet_samples} samples at {sample_rate} Hz as one frame")
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = sample_rate
        codec.time_base = Fraction(1, sample_rate)
        codec.options = {"application": "voip"}
        self.codec = codec
        self.sample_rate = sample_rate
        self.time_base = Fraction(1, sample_rate)
        self.encoded = 0   # packets libopus actually coded
        self.reused = 0    # settled silent packets sent again
        self._silent_run = 0
        self._last_silent: bytes | None = None
        self._settled_silence: bytes | None = None

    def encode(self, pcm: np.ndarray, pts: int) -> av.Packet:
        """One packet for `pcm` (packet_samples int16 samples) shown at sample `pts`."""
        silent = not pcm.any()
        if silent and self._settled_silence is not None:
            self.reused += 1
            return self._packet(self._settled_silence, pts)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = pts
        frame.time_base = self.time_base
        packets = self.codec.encode(frame)
        # libopus at 20 ms without lookahead buffering returns exactly one packet per frame.
        data = b"".join(bytes(p) for p in packets)
        self.encoded += 1
        self._note(silent, data)
        return self._packet(data, pts)

    def _note(self, silent: bool, data: bytes) -> None:
        # The encoder (and so the browser's decoder) has settled on silence once it codes a run
        # of silent input as identical bytes; from then on those bytes are the next packet.
        if not silent:
            self._silent_run, self._last_silent, self._settled_silence = 0, None, None
            return
        self._silent_run += 1
        if self._silent_run >= SETTLED and data == self._last_silent:
            self._settled_silence = data
        self._last_silent = data

    def _packet(self, data: bytes, pts: int) -> av.Packet:
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self.time_base
        return packet
