"""A thread that takes encoded packets for one output (a muxer, a network push), so that a slow
or stalled output drops its own packets and never holds up the encoder or another output."""
from __future__ import annotations

import logging
import threading
from collections import deque

from tracks.h264_feed import EncodedPacket

log = logging.getLogger(__name__)


class PacketWorker:
    """Subclasses implement `handle`; `offer` is the H264Feed consumer.

    When more than `backlog` packets wait, the new ones are dropped and counted, and the
    output then skips to the next video keyframe (a decoder cannot use what follows a gap).
    """

    name = "packets"

    def __init__(self, backlog: int = 500) -> None:
        self._packets: deque[EncodedPacket] = deque()
        self._backlog = backlog
        self._wake = threading.Condition()
        self._stopping = False
        self._resync = True  # start on a keyframe
        self.dropped = 0
        self.handled = 0
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, packets: list[EncodedPacket]) -> None:
        with self._wake:
            if len(self._packets) + len(packets) > self._backlog:
                # Too far behind (a stalled server, a slow disk): let this output skip ahead,
                # alone, to the next keyframe.
                log.warning("%s: %d packets behind; dropping them and going on from the next keyframe",
                            self.name, len(self._packets))
                self.dropped += len(self._packets) + len(packets)
                self._packets.clear()
                self._resync = True
                return
            self._packets.extend(packets)
            self._wake.notify()

    def resync(self) -> None:
        """Skip to the next keyframe (after an error that lost what came before)."""
        self._resync = True

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._packets and not self._stopping:
                    self._wake.wait()
                if not self._packets and self._stopping:
                    break
                packet = self._packets.popleft()
            if self._resync:
                if not (packet.kind == "video" and packet.keyframe):
                    continue
                self._resync = False
            try:
                self.handle(packet)
                self.handled += 1
            except Exception as exc:
                log.warning("%s: packet not written: %s", self.name, exc)
                self._resync = True
        try:
            self.finish()
        except Exception:
            log.exception("%s: finishing failed", self.name)

    def handle(self, packet: EncodedPacket) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once in the worker's thread after the last packet."""

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then finish; returns when done (or after `timeout`)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
