"""Fragmented MP4 in memory: an init segment, then one fragment (moof + mdat) per keyframe
interval, each handed over whole with its duration. HLS live and recordings are made of these."""
from __future__ import annotations

import io
from collections import deque
from typing import Callable

import av

from tracks.h264_feed import EncodedPacket, H264Feed
from tracks.muxer import MuxWorker


class BoxSplitter(io.RawIOBase):
    """A write-only file that cuts what the MP4 muxer writes into top-level boxes."""

    def __init__(self, on_box: Callable[[bytes, bytes], None]) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._on_box = on_box

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[:4], "big")
            header = 8
            if size == 1:  # a 64-bit size follows the type
                if len(self._buffer) < 16:
                    break
                size, header = int.from_bytes(self._buffer[8:16], "big"), 16
            if size < header or len(self._buffer) < size:
                break
            box = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._on_box(box[4:8], box)
        return len(data)


class Fmp4Segmenter(MuxWorker):
    """Muxes the feed to fMP4 and calls `on_init(bytes)` once and `on_fragment(bytes, seconds)`
    for each fragment, from its own thread. Fragments start on keyframes (the feed's gop)."""

    name = "fmp4"

    def __init__(self, feed: H264Feed, on_init: Callable[[bytes], None],
                 on_fragment: Callable[[bytes, float], None]) -> None:
        super().__init__(feed)
        self._on_init, self._on_fragment = on_init, on_fragment
        self._init = bytearray()
        self._moof: bytes | None = None
        self._gops: deque[int] = deque()  # video frames of each keyframe interval not yet written
        self._frames_in_gop = 0

    def open_container(self) -> av.container.OutputContainer:
        # flush_packets: each fragment reaches on_box when it is complete, not when a 32 KB buffer fills.
        return av.open(BoxSplitter(self._on_box), "w", format="mp4",
                       options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"})

    def handle(self, packet: EncodedPacket) -> None:
        if packet.kind == "video" and self.container is not None:
            if packet.keyframe and self._frames_in_gop:
                self._gops.append(self._frames_in_gop)
                self._frames_in_gop = 0
        super().handle(packet)
        if packet.kind == "video" and self.container is not None:
            self._frames_in_gop += 1

    def _on_box(self, kind: bytes, box: bytes) -> None:
        if kind in (b"ftyp", b"moov"):
            self._init += box
            if kind == b"moov":
                self._on_init(bytes(self._init))
        elif kind == b"moof":
            self._moof = box
        elif kind == b"mdat" and self._moof is not None:
            frames = self._gops.popleft() if self._gops else self._frames_in_gop
            self._on_fragment(self._moof + box, frames / self.feed.fps)
            self._moof = None

    def finish(self) -> None:
        if self._frames_in_gop:
            self._gops.append(self._frames_in_gop)
            self._frames_in_gop = 0
        super().finish()
