"""The output machinery without a server: box splitting, playlists, packet backlogs, shared
encodings, fMP4 fragments of a real encoder (fast tier)."""
from __future__ import annotations

import io
import random
import threading
from fractions import Fraction

import av
import numpy as np

from rtc_server.outputs.hls import SegmentList
from tracks.avframe import AVFrame
from tracks.encode_thread import SharedFeed
from tracks.fmp4 import BoxSplitter, Fmp4Segmenter
from tracks.h264_feed import EncodedPacket, H264Feed
from tracks.packet_worker import PacketWorker


def box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def test_boxes_come_out_whole_however_the_bytes_are_cut():
    boxes = [box(b"ftyp", b"x" * 20), box(b"moov", b"y" * 300), box(b"moof", b"z" * 50), box(b"mdat", b"w" * 4000)]
    stream = b"".join(boxes)
    out: list[tuple[bytes, bytes]] = []
    splitter = BoxSplitter(lambda kind, data: out.append((kind, data)))
    rng = random.Random(1)
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 700)
        splitter.write(stream[pos:pos + step])
        pos += step
    assert [k for k, _ in out] == [b"ftyp", b"moov", b"moof", b"mdat"]
    assert [d for _, d in out] == boxes


def test_a_live_playlist_slides_and_an_event_playlist_keeps_everything_and_ends():
    live = SegmentList(window=3)
    live.add_init(b"init")
    for n in range(5):
        live.add(f"seg{n}".encode(), 1.0)
    text = live.playlist()
    assert "#EXT-X-MEDIA-SEQUENCE:2" in text and "seg2.m4s" in text and "seg1.m4s" not in text
    assert "#EXT-X-ENDLIST" not in text and "PLAYLIST-TYPE" not in text
    assert live.segment("seg4.m4s") == b"seg4" and live.segment("seg1.m4s") is None
    assert live.segment("../seg4.m4s") is None and live.segment("segX.m4s") is None
    event = SegmentList(window=None, event=True)
    for n in range(5):
        event.add(n, 1.04 if n == 4 else 1.0)
    event.end()
    text = event.playlist()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and text.count(".m4s") == 5 and text.endswith("#EXT-X-ENDLIST\n")
    assert "#EXT-X-TARGETDURATION:2" in text  # the longest segment, rounded up


def packet(kind: str, n: int, key: bool = False) -> EncodedPacket:
    return EncodedPacket(kind, b"", n, n, Fraction(1, 25), key)


class Recorder(PacketWorker):
    def __init__(self, backlog: int) -> None:
        super().__init__(backlog)
        self.seen: list[tuple[str, int]] = []

    def handle(self, p: EncodedPacket) -> None:
        self.seen.append((p.kind, p.pts))


def test_a_worker_behind_its_backlog_drops_and_resumes_on_the_next_keyframe():
    worker = Recorder(backlog=10)
    for n in range(8):  # not started yet: the packets wait
        worker.offer([packet("video", n, key=n % 5 == 0), packet("audio", n)])
    assert worker.dropped == 12  # the sixth batch overflowed: it and the ten waiting went
    for n in range(8, 11):
        worker.offer([packet("video", n, key=n == 10), packet("audio", n)])
    assert worker.dropped == 12  # ten waiting again: at the limit, not over it
    worker.start()
    worker.stop()
    # Nothing before the first keyframe after the drop (10), then everything.
    assert worker.seen == [("video", 10), ("audio", 10)]


def test_a_shared_encoding_is_made_once_and_closed_after_its_last_user():
    made, attached, detached = [], [], []

    class Fake:
        closed = False

        def close(self) -> None:
            self.closed = True

    def make():
        made.append(Fake())
        return made[-1]

    shared = SharedFeed(make, attached.append, detached.append)
    a, b = shared.acquire(), shared.acquire()
    assert a is b and len(made) == 1 and attached == [a]
    shared.release()
    assert not a.closed and detached == []
    shared.release()
    assert a.closed and detached == [a] and shared.feed is None
    assert shared.acquire() is not a  # a later user gets a new one


def test_fmp4_fragments_of_a_real_encoder_start_on_keyframes_and_add_up_to_the_ticks():
    feed = H264Feed(64, 64, 25, 48_000, gop=10)
    fragments: list[tuple[bytes, float]] = []
    init: list[bytes] = []
    done = threading.Event()
    segmenter = Fmp4Segmenter(feed, init.append, lambda data, seconds: fragments.append((data, seconds)))
    segmenter.start()
    feed.subscribe(segmenter.offer)
    silence = np.zeros(1920, np.int16)
    for tick in range(35):
        yuv = np.full((96, 64), 16 + 5 * tick, np.uint8)
        feed.push(tick, AVFrame(video=yuv, audio=silence))
    while feed.stats.encoded < 35:
        done.wait(0.01)
    feed.unsubscribe(segmenter.offer)
    segmenter.stop()
    feed.close()
    assert len(init) == 1
    assert [round(s, 3) for _, s in fragments] == [0.4, 0.4, 0.4, 0.2]  # gop 10, the last 5 ticks
    media = av.open(io.BytesIO(init[0] + b"".join(d for d, _ in fragments)))
    frames = list(media.decode(video=0))
    assert len(frames) == 35
