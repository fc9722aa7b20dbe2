"""HLS live: the session's H.264 + AAC as fMP4 segments kept in memory, a sliding playlist, both
at a capability URL (the key in the URL is the credential), and a /watch page that plays it."""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from rtc_server.outputs.h264 import FeedOutput
from rtc_server.outputs.publish import Published
from tracks.fmp4 import Fmp4Segmenter
from tracks.h264_feed import H264Feed

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp4"


class SegmentList:
    """fMP4 segments and the playlist that names them; written by a muxer thread, read by the loop."""

    def __init__(self, window: int | None, event: bool = False) -> None:
        self._lock = threading.Lock()
        self.init: bytes | None = None
        self.segments: deque[tuple[int, float, Any]] = deque(maxlen=window)  # (sequence, seconds, data)
        self.sequence = 0
        self.event = event
        self.ended = False

    def add_init(self, data: bytes) -> None:
        with self._lock:
            self.init = data

    def add(self, data: Any, seconds: float) -> None:
        with self._lock:
            self.segments.append((self.sequence, seconds, data))
            self.sequence += 1

    def end(self) -> None:
        with self._lock:
            self.ended = True

    def playlist(self) -> str:
        with self._lock:
            segments = list(self.segments)
            ended = self.ended
        target = max((math.ceil(s) for _, s, _ in segments), default=1)
        first = segments[0][0] if segments else self.sequence
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", "#EXT-X-INDEPENDENT-SEGMENTS"]
        if self.event:
            lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
        lines.append('#EXT-X-MAP:URI="init.mp4"')
        for sequence, seconds, _ in segments:
            lines += [f"#EXTINF:{seconds:.3f},", f"seg{sequence}.m4s"]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment(self, name: str) -> Any:
        """The data of `seg{n}.m4s`, or None."""
        if not (name.startswith("seg") and name.endswith(".m4s") and name[3:-4].isdigit()):
            return None
        wanted = int(name[3:-4])
        with self._lock:
            for sequence, _, data in self.segments:
                if sequence == wanted:
                    return data
        return None

    def serve(self, name: str, read=lambda data: data) -> tuple[bytes, str] | None:
        """The playlist (None until it names a segment: the route waits for one a little), the
        init segment, or a segment, whose stored data `read` turns into bytes."""
        if name == "index.m3u8":
            return (self.playlist().encode(), PLAYLIST_TYPE) if self.sequence else None
        if name == "init.mp4":
            return (self.init, SEGMENT_TYPE) if self.init is not None else None
        data = self.segment(name)
        return (read(data), SEGMENT_TYPE) if data is not None else None

    @property
    def seconds(self) -> float:
        with self._lock:
            return sum(s for _, s, _ in self.segments)


class HlsOutput(FeedOutput):
    """{"type": "hls"}: a live playlist of the last few segments at `url`, and a `watch` page."""

    type = "hls"
    WINDOW = 6  # segments in the live playlist (and in memory)

    def __init__(self, published: Published) -> None:
        super().__init__()
        self._published = published
        self.segments = SegmentList(window=self.WINDOW)
        self.key = published.add(self.segments.serve)

    def make_worker(self, feed: H264Feed) -> Fmp4Segmenter:
        return Fmp4Segmenter(feed, self.segments.add_init, self.segments.add)

    async def stop(self) -> None:
        self._published.remove(self.key)
        await super().stop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": f"/live/{self.key}/index.m3u8", "watch": f"/watch/{self.key}"}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "segments": self.segments.sequence}
