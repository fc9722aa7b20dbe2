"""Muxing a session's shared H.264 + AAC packets into one container (fMP4 fragments, FLV to
an RTMP server), in the output's own thread, with timestamps counted from the output's start."""
from __future__ import annotations

from fractions import Fraction

import av

from tracks.h264_feed import EncodedPacket, H264Feed
from tracks.packet_worker import PacketWorker


class MuxWorker(PacketWorker):
    """Opens a container with `open_container` at the first keyframe and muxes into it.

    Time zero of the container is that keyframe: an output added at minute 20 of a session
    starts at 0, like a recording should. A subclass may `close_container` after an error and
    the next keyframe opens a new one (what the RTMP push does to reconnect).
    """

    def __init__(self, feed: H264Feed, backlog: int = 500) -> None:
        super().__init__(backlog)
        self.feed = feed
        self.container: av.container.OutputContainer | None = None
        self._streams: dict[str, av.stream.Stream] = {}
        self._origin: Fraction | None = None  # feed time of this output's first keyframe
        self.last_video_time: Fraction | None = None  # feed time of the last video packet muxed
        self.audio_end: Fraction | None = None  # feed time where the last audio packet muxed ends
        # Feed time at which this output ends (stop): later packets of either track are left out,
        # so both tracks end together however far the audio encoder lags the picture.
        self.end_time: Fraction | None = None

    def open_container(self) -> av.container.OutputContainer:
        raise NotImplementedError

    def handle(self, packet: EncodedPacket) -> None:
        if self.container is None:
            if not (packet.kind == "video" and packet.keyframe):
                return
            self.container = self.open_container()
            self._streams = {"video": self.container.add_stream_from_template(self.feed.video_template),
                             "audio": self.container.add_stream_from_template(self.feed.audio_template)}
            if self._origin is None:
                self._origin = packet.pts * packet.time_base
        assert self._origin is not None
        shift = int(self._origin / packet.time_base)
        if packet.pts < shift:
            return  # audio from before the first keyframe (the AAC priming): nothing may start below 0
        start = packet.pts * packet.time_base
        if self.end_time is not None and start >= self.end_time:
            return
        rebased = packet.to_av(self._streams[packet.kind])
        rebased.pts, rebased.dts = packet.pts - shift, packet.dts - shift
        self.container.mux(rebased)
        if packet.kind == "video":
            self.last_video_time = start
        else:
            self.audio_end = (packet.pts + packet.duration) * packet.time_base

    @property
    def last_video_tick(self) -> int:
        """The feed tick of the last video packet muxed (-1 before any)."""
        return -1 if self.last_video_time is None else round(self.last_video_time * self.feed.fps)

    def close_container(self) -> None:
        container, self.container = self.container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # a broken connection cannot write its trailer: nothing to keep
                pass

    def finish(self) -> None:
        self.close_container()
