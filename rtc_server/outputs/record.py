"""Recording: the session's audio and video from the moment the output is added, written as one
fragmented MP4 file that is playable while it grows (an HLS EVENT playlist over its fragments at
a capability URL) and is the finished MP4 when the output stops."""
from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from rtc_server.outputs.h264 import FeedOutput
from rtc_server.outputs.hls import SegmentList
from rtc_server.outputs.publish import Published
from tracks.fmp4 import Fmp4Segmenter
from tracks.h264_feed import H264Feed


class Recordings:
    """The app's finished and running recordings: downloadable with their session's token, also
    after the session ended (the last `keep` of them; older files stay on disk, unlisted)."""

    def __init__(self, folder: Path, keep: int = 100) -> None:
        self.folder = folder
        self._keep = keep
        self._by_id: OrderedDict[str, tuple[str, "RecordOutput"]] = OrderedDict()

    def add(self, token: str, output: "RecordOutput") -> None:
        self._by_id[output.id] = (token, output)
        while len(self._by_id) > self._keep:
            _, (_, oldest) = self._by_id.popitem(last=False)
            oldest.unpublish()

    def find(self, output_id: str, token: str) -> "RecordOutput | None":
        entry = self._by_id.get(output_id)
        expected = entry[0] if entry is not None else "-" * 32
        if not hmac.compare_digest(token.encode(), expected.encode()) or entry is None:
            return None
        return entry[1]


class RecordOutput(FeedOutput):
    """{"type": "record"}: `url` plays it (live, then whole), `download` is the MP4 (token needed)."""

    type = "record"

    def __init__(self, published: Published, recordings: Recordings) -> None:
        super().__init__()
        self._published = published
        self._recordings = recordings
        self.segments = SegmentList(window=None, event=True)
        self.key = published.add(self.serve)
        self.path: Path | None = None
        self._file = None
        self._size = 0

    async def open(self, session) -> None:
        self._recordings.folder.mkdir(parents=True, exist_ok=True)
        self.path = self._recordings.folder / f"{session.id}-{self.id}.mp4"
        self._file = open(self.path, "wb")  # written by the muxer thread only
        self._recordings.add(session.token, self)
        await super().open(session)

    def make_worker(self, feed: H264Feed) -> Fmp4Segmenter:
        return Fmp4Segmenter(feed, self._write_init, self._write_fragment)

    def _write_init(self, data: bytes) -> None:
        self._append(data)
        self.segments.add_init(data)

    def _write_fragment(self, data: bytes, seconds: float) -> None:
        offset = self._append(data)
        self.segments.add((offset, len(data)), seconds)

    def _append(self, data: bytes) -> int:
        assert self._file is not None
        offset = self._size
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        return offset

    def serve(self, name: str) -> tuple[bytes, str] | None:
        return self.segments.serve(name, read=self._read)

    def _read(self, where: tuple[int, int]) -> bytes:
        offset, length = where
        assert self.path is not None
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def unpublish(self) -> None:
        """Stop serving the playlist (the file stays on disk)."""
        self._published.remove(self.key)

    async def stop(self) -> None:
        if self.state in ("stopped", "finished"):
            return
        await super().stop()
        if self._file is not None:
            self._file.close()
        self.segments.end()
        self.state = "finished"

    def describe(self) -> dict[str, Any]:
        sid = self.session.id if self.session is not None else ""
        return {**super().describe(), "url": f"/live/{self.key}/index.m3u8", "watch": f"/watch/{self.key}",
                "download": f"/sessions/{sid}/recordings/{self.id}.mp4"}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "seconds": round(self.segments.seconds, 3), "bytes": self._size}
