"""aiortc tracks fed by the tick loop: both take their pts from the same tick index."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.opus import OpusPacketizer, opus_frame_ok

VIDEO_CLOCK = 90_000
AUDIO_PACKET_SECONDS = 0.020


class TickTrack(MediaStreamTrack):
    """A track whose frames are pushed by the clock; recv() hands them to the sender.

    The buffer is short and drops the oldest frame when the sender falls behind, so delay
    can never build up. On the first recv() stale frames are discarded: the sender starts
    from the tick now on air. A frame is not handed out before its due time, so the second
    20 ms audio packet of a tick leaves 20 ms after the first instead of in a burst (the
    browser's jitter buffer sizes itself on arrival jitter).
    """

    def __init__(self, kind: str, max_buffered: int) -> None:
        super().__init__()
        self.kind = kind
        self._frames: deque = deque(maxlen=max_buffered)
        self._ready = asyncio.Event()
        self._receiving = False
        self.dropped = 0
        self.sent = 0
        self.last_due: float | None = None  # due time of the frame recv() handed out last

    def put(self, frame: av.VideoFrame | av.AudioFrame | av.Packet, due: float = 0.0) -> None:
        """Queue `frame` to be sent at monotonic time `due` (or at once if that has passed)."""
        if self.readyState != "live":
            return
        if self._receiving and len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append((due, frame))
        self._ready.set()

    async def recv(self) -> av.VideoFrame | av.AudioFrame | av.Packet:
        if not self._receiving:
            self._receiving = True
            self._frames.clear()
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        due, frame = self._frames.popleft()
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.sent += 1
        self.last_due = due
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class TickAudio:
    """A tick's audio as the packets the audio track sends (Opus here where its packets tile a
    tick: 25 fps at 48 kHz is 2 x 20 ms; raw frames for aiortc to encode otherwise), each with
    its due time."""

    def __init__(self, clock: MediaClock, sample_rate: int) -> None:
        self.clock = clock
        self.sample_rate = sample_rate
        self.samples_per_tick = sample_rate // clock.fps
        packet = int(sample_rate * AUDIO_PACKET_SECONDS)
        self.packet_samples = packet if self.samples_per_tick % packet == 0 else self.samples_per_tick
        self.packets_per_tick = self.samples_per_tick // self.packet_samples
        self._tb = Fraction(1, sample_rate)
        self.opus = OpusPacketizer(sample_rate, self.packet_samples) \
            if opus_frame_ok(sample_rate, self.packet_samples) else None

    def packets(self, tick: int, audio: np.ndarray) -> list[tuple[av.Packet | av.AudioFrame, float]]:
        due = self.clock.due(tick)
        base = tick * self.samples_per_tick
        out = []
        for offset in range(0, self.samples_per_tick, self.packet_samples):
            pcm = audio[offset : offset + self.packet_samples]
            out.append((self._out(pcm, base + offset), due + offset / self.sample_rate))
        return out

    def _out(self, pcm: np.ndarray, pts: int) -> av.Packet | av.AudioFrame:
        if self.opus is not None:
            return self.opus.encode(pcm, pts)
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = pts
        af.time_base = self._tb
        return af


def video_pts(tick: int, fps: int) -> int:
    return tick * VIDEO_CLOCK // fps


class RtcSink:
    """Turns AVFrames into one video and one audio aiortc frame stream stamped from the tick."""

    def __init__(self, clock: MediaClock, sample_rate: int) -> None:
        self.clock = clock
        self.fps = clock.fps
        self.tick_audio = TickAudio(clock, sample_rate)
        self.video = TickTrack("video", max_buffered=3)
        self.audio = TickTrack("audio", max_buffered=3 * self.tick_audio.packets_per_tick)
        self._video_tb = Fraction(1, VIDEO_CLOCK)

    def push(self, tick: int, frame: AVFrame) -> None:
        vf = av.VideoFrame.from_ndarray(frame.video, format="yuv420p")
        vf.pts = video_pts(tick, self.fps)
        vf.time_base = self._video_tb
        self.video.put(vf, self.clock.due(tick))
        for packet, due in self.tick_audio.packets(tick, frame.audio):
            self.audio.put(packet, due)

    def stop(self) -> None:
        self.video.stop()
        self.audio.stop()
