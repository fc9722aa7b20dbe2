"""The base of outputs that mux the session's shared H.264 + AAC feed (HLS, record, RTMP)."""
from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from rtc_server.outputs.base import Output
from tracks.h264_feed import H264Feed
from tracks.muxer import MuxWorker
from tracks.packet_worker import PacketWorker

if TYPE_CHECKING:
    from rtc_server.session import Session


class FeedOutput(Output):
    """Subscribes a PacketWorker (made by `make_worker`) to the session's H264Feed."""

    def __init__(self) -> None:
        super().__init__()
        self.worker: PacketWorker | None = None
        self._feed: H264Feed | None = None

    def make_worker(self, feed: H264Feed) -> PacketWorker:
        raise NotImplementedError

    async def open(self, session: "Session") -> None:
        await super().open(session)
        self._feed = session.encodings.acquire()
        self.worker = self.make_worker(self._feed)
        self.worker.start()
        self._feed.subscribe(self.worker.offer)
        # The next keyframe would come up to one gop later: ask for one now.
        self._feed.request_keyframe()

    async def stop(self) -> None:
        if self.state in ("stopped", "finished"):
            return
        await super().stop()
        if self._feed is not None and self.worker is not None:
            await self._drain(self.worker)
            self._feed.unsubscribe(self.worker.offer)
            # Writing the tail (and a trailer over the network) may take a moment: not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        if self.session is not None and self._feed is not None:
            self.session.encodings.release()
        self._feed = None

    async def _drain(self, worker: PacketWorker, timeout: float = 1.0) -> None:
        """Wait (briefly) until the ticks already on air are written, picture and sound: an output
        stopped at tick n ends with tick n, not with whatever the encoders had finished by then
        (the audio encoder holds back about two ticks)."""
        if self.session is None or not isinstance(worker, MuxWorker) or worker.container is None:
            return
        last = self.session.stream.tick - 1
        end = Fraction(last + 1, self.session.config.fps)
        worker.end_time = end

        def written() -> bool:
            return worker.last_video_tick >= last and worker.audio_end is not None and worker.audio_end >= end

        deadline = asyncio.get_running_loop().time() + timeout
        while not written() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        worker = self.worker
        feed = self._feed
        return {
            "packets": worker.handled if worker is not None else 0,
            "dropped_packets": worker.dropped if worker is not None else 0,
            "encoder_dropped_ticks": feed.stats.dropped if feed is not None else 0,
        }
