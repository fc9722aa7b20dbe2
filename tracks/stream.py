"""The tick loop: every 1/fps seconds one AVFrame leaves for every attached sink.

This is where the session's clock ticks. It takes the next rendered frame from the
FrameQueue, or an idle frame when there is none, and hands the same frame with the same
tick index to every sink (the WebRTC tracks today; recorders or other outputs later).
It never waits for the renderer and never shifts the timeline.

A clock with nothing to show rests: when the idle picture never changes (a viseme session's
blank frame), nothing is queued and every sink says it needs no tick that brings nothing new,
it sleeps until a frame is queued or a sink joins, and still emits one frame a second (the
face stream's keep-alive). An idle viseme session then costs one wake a second, not 25.

A clock whose sinks all rest and carry no audio also rests while speaking, as long as the queued
frames show the picture already shown (a viseme session whose voice went ahead over its socket):
it takes the queued frames without emitting them and sleeps until the frame that starts or ends
an utterance, the keep-alive, or the last queued frame is due. An interrupt or a sink joining
then waits for that tick too (at most the queue's length, 8 ticks by default).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.frame_queue import FrameQueue

log = logging.getLogger(__name__)


class AVSink(Protocol):
    def push(self, tick: int, frame: AVFrame) -> None:
        """Take frame `frame` for tick `tick` (must not block)."""

    # Optional: `rests_when_still = True` says this sink needs no tick that repeats a still idle
    # frame (one a second is enough); sinks without it get every tick. `carries_audio = False`
    # says it takes no audio from the ticks either (the voice went ahead another way), so a
    # still picture while speaking is as good as idle to it.


class IdleSource(Protocol):
    def idle(self, tick: int) -> AVFrame:
        """The frame for `tick` when nothing is queued."""

    # Optional: `still = True` says every idle frame is the same picture and silence.


@dataclass
class StreamStats:
    ticks: int = 0
    speech_frames: int = 0
    idle_frames: int = 0
    underruns: int = 0     # queue empty in the middle of an utterance: video repeated, audio silent
    late_ticks: int = 0    # ticks emitted more than a frame after their due time
    skipped_ticks: int = 0  # ticks given up after a long stall of the event loop
    rested_ticks: int = 0   # still idle ticks no sink needed (counted in ticks and idle_frames too)


SpeechCallback = Callable[[str, str], None]  # (event "start"|"end", utterance_id)


class AVStream:
    """Runs the clock of one session and fans each tick's AVFrame out to the sinks."""

    def __init__(
        self,
        clock: MediaClock,
        queue: FrameQueue,
        idle: IdleSource,
        *,
        max_catch_up_ticks: int | None = None,
        on_speech: SpeechCallback | None = None,
    ) -> None:
        self.clock = clock
        self.queue = queue
        self.idle_source = idle
        self.sinks: list[AVSink] = []
        self.stats = StreamStats()
        self.on_speech = on_speech
        # A short stall is caught up in a burst (keeps audio whole); a long one is skipped.
        self.max_catch_up = max_catch_up_ticks if max_catch_up_ticks is not None else clock.fps // 2
        self.current_utterance: str | None = None
        self._last_video = None
        self.tick = 0
        # Resting: set when a frame is queued or a sink joins.
        self._wake = asyncio.Event()
        queue.wake_on_put(self._wake)
        self._resting = False
        self._promised: int | None = None

    def attach(self, sink: AVSink) -> None:
        self.sinks.append(sink)
        self._wake.set()

    def next_tick(self) -> int:
        """The tick a frame queued now leaves on (when resting, the next one due, not a stale count).

        While resting this is a promise: the rest ends on that tick when the frame comes. (After
        speech slept through, self.tick is that of the frame at the queue's head: the frames
        queued next follow it.)"""
        if not self._resting:
            return self.tick
        promised = max(self.tick, self.clock.current_tick() + 1)
        self._promised = promised if self._promised is None else max(self._promised, promised)
        return promised

    def detach(self, sink: AVSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    async def run(self) -> None:
        """Tick until cancelled."""
        if not self.clock.started:
            self.clock.start()
        frame_time = 1 / self.clock.fps
        while True:
            lateness = await self.clock.wait_for(self.tick)
            if lateness > frame_time:
                self.stats.late_ticks += 1
                behind = self.clock.current_tick() - self.tick
                if behind > self.max_catch_up:
                    log.warning("clock stalled %.0f ms: skipping %d ticks", lateness * 1000, behind)
                    self.stats.skipped_ticks += behind
                    self.tick += behind
            self.emit(self.tick, self._next_frame(self.tick))
            self.tick += 1
            if self._may_rest():
                await self._rest()
            elif self._may_rest_through_speech():
                self._skip_still_speech()

    def _may_rest(self) -> bool:
        return (not len(self.queue) and self.current_utterance is None
                and getattr(self.idle_source, "still", False) and self._sinks_rest(audio_too=False))

    def _may_rest_through_speech(self) -> bool:
        return (self.current_utterance is not None and len(self.queue) > 1 and bool(self.sinks)
                and self._sinks_rest(audio_too=True))

    def _sinks_rest(self, audio_too: bool) -> bool:
        """Every sink does without ticks that repeat a still picture (and, audio_too, their audio)."""
        return all(getattr(sink, "rests_when_still", False)
                   and not (audio_too and getattr(sink, "carries_audio", True)) for sink in self.sinks)

    def _skip_still_speech(self) -> None:
        """Take, without emitting them, the queued speech frames that bring no sink anything new, up
        to the one that ends the run (an utterance's edge, the keep-alive, the last one queued):
        the loop then sleeps until that one's tick, while the producer refills the queue."""
        skip = 0
        for frame in self.queue.peek()[:-1]:  # (the last queued frame is kept for the tick it leaves on)
            if frame.first or frame.last or frame.video is not self._last_video or skip == self.clock.fps - 1:
                break  # (fps - 1: the keep-alive, a tick emitted at least once a second)
            skip += 1
        for _ in range(skip):
            self.queue.get_nowait()
        self.stats.ticks += skip
        self.stats.speech_frames += skip
        self.stats.rested_ticks += skip
        self.tick += skip

    async def _rest(self) -> None:
        """Sleep through still idle ticks until a frame is queued, a sink joins, or a second passed."""
        keepalive = self.tick - 1 + self.clock.fps
        self._wake.clear()
        self._resting = True
        woken = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self.clock.wait_for(keepalive))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._resting = False
            for waiter in (woken, timer):
                waiter.cancel()
            await asyncio.gather(woken, timer, return_exceptions=True)
        if woken.done() and not woken.cancelled():
            # Go on from the tick promised to the frame's producer (next_tick), or the next one due.
            floor = self.clock.current_tick()
            target = self._promised if self._promised is not None else floor + 1
            resume = min(keepalive, max(self.tick, target, floor))
        else:
            resume = keepalive
        self._promised = None
        rested = resume - self.tick
        self.stats.ticks += rested
        self.stats.idle_frames += rested
        self.stats.rested_ticks += rested
        self.tick = resume

    def _next_frame(self, tick: int) -> AVFrame:
        frame = self.queue.get_nowait()
        if frame is not None:
            return frame
        if self.current_utterance is not None and self._last_video is not None:
            # The renderer fell behind mid-utterance: hold the last picture rather than
            # flashing the idle face; the audio of this tick is silence.
            self.stats.underruns += 1
            idle = self.idle_source.idle(tick)
            return AVFrame(video=self._last_video, audio=idle.audio)
        return self.idle_source.idle(tick)

    def emit(self, tick: int, frame: AVFrame) -> None:
        self.stats.ticks += 1
        if frame.is_speech:
            self.stats.speech_frames += 1
            if frame.first or frame.utterance_id != self.current_utterance:
                self.current_utterance = frame.utterance_id
                self._notify("start", frame.utterance_id)
            self._last_video = frame.video
        else:
            self.stats.idle_frames += 1
        for sink in self.sinks:
            try:
                sink.push(tick, frame)
            except Exception:  # one broken sink must not stop the clock for the others
                log.exception("sink %r failed; detaching it", sink)
                self.detach(sink)
        if frame.is_speech and frame.last:
            self._notify("end", frame.utterance_id)
            self.current_utterance = None
            self._last_video = None

    def end_utterance(self) -> str | None:
        """Forget the utterance on air (after an interrupt); returns its id if one was playing."""
        playing = self.current_utterance
        self.current_utterance = None
        self._last_video = None
        return playing

    def _notify(self, event: str, utterance_id: str | None) -> None:
        if self.on_speech is not None and utterance_id is not None:
            self.on_speech(event, utterance_id)
