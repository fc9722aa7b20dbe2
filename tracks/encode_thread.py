"""A thread that encodes the clock's frames for one shared encoding, off the clock's thread.

`push` is the AVSink side: it never blocks; when the encoder is more than `backlog` frames
behind, the oldest frame is dropped and counted. Subclasses implement `encode`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from tracks.avframe import AVFrame

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    encoded: int = 0
    dropped: int = 0          # ticks the encoder was too far behind to take
    encode_seconds: float = 0.0


class EncodeThread:
    name = "encoder"

    def __init__(self, backlog: int) -> None:
        self._frames: deque[tuple[int, AVFrame]] = deque()
        self._backlog = backlog
        self._wake = threading.Condition()
        self._closed = False
        self.stats = EncodeStats()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def push(self, tick: int, frame: AVFrame) -> None:
        with self._wake:
            if len(self._frames) >= self._backlog:
                self._frames.popleft()
                self.stats.dropped += 1
            self._frames.append((tick, frame))
            self._wake.notify()

    def encode(self, tick: int, frame: AVFrame) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._frames and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                tick, frame = self._frames.popleft()
            start = time.perf_counter()
            try:
                self.encode(tick, frame)
            except Exception:  # one broken frame must not end the encoding for every output
                log.exception("%s: tick %d could not be encoded", self.name, tick)
                continue
            self.stats.encode_seconds += time.perf_counter() - start
            self.stats.encoded += 1

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._frames.clear()
            self._wake.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)


E = TypeVar("E", bound=EncodeThread)


class SharedFeed(Generic[E]):
    """One shared encoding of a session, made when the first output needs it, attached to the
    clock, and detached and closed after the last output let go of it."""

    def __init__(self, make: Callable[[], E], attach: Callable[[E], None], detach: Callable[[E], None]) -> None:
        self._make, self._attach, self._detach = make, attach, detach
        self._feed: E | None = None
        self._users = 0

    def acquire(self) -> E:
        if self._feed is None:
            self._feed = self._make()
            self._attach(self._feed)
        self._users += 1
        return self._feed

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._feed is not None:
            feed, self._feed, self._users = self._feed, None, 0
            self._detach(feed)
            feed.close()

    @property
    def feed(self) -> E | None:
        return self._feed
