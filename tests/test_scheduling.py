"""The scheduling core on a fake clock (fast tier): the frame queue, the tick loop, interrupts,
and speculative work thrown away when the user goes on speaking.

No model, no peer, no real time: FakeTime stands in for time.monotonic and asyncio.sleep,
so a thousand ticks or a two-second stall take microseconds and give exact figures.
"""
from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.speech import PhonemeTiming, SpeechChunk
from rtc_server.speaker import Speaker, one_text
from rtc_server.speculation import Prefetch, Speculation
from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.frame_queue import FrameQueue
from tracks.stream import AVStream

FPS = 25
SPT = 640  # samples per tick at 16 kHz


class FakeTime:
    """A monotonic clock that only moves when slept on, plus stalls injected before chosen ticks."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.stall_next: list[float] = []  # extra time lost on the next sleeps, one per sleep

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.t += delay + (self.stall_next.pop(0) if self.stall_next else 0.0)
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def clock(self, fps: int = FPS) -> MediaClock:
        return MediaClock(fps, now=self.now, sleep=self.sleep)


def picture(value: int) -> np.ndarray:
    return np.full((6, 4), value, np.uint8)


def speech(uid: str, n: int, value: int = 200) -> list[AVFrame]:
    """n frames of one utterance; the picture value says which frame it is (value + index)."""
    audio = np.full(SPT, 1000, np.int16)
    return [AVFrame(video=picture(value + i), audio=audio, utterance_id=uid, first=i == 0, last=i == n - 1)
            for i in range(n)]


async def enqueue(queue: FrameQueue, frames: list[AVFrame]) -> None:
    for frame in frames:
        assert await queue.put(frame)


def shown(sink: "Recorder") -> list[int]:
    """The picture value of every tick the sink saw (0 is the idle face)."""
    return [int(frame.video[0, 0]) for _, frame, _ in sink.ticks]


class Idle:
    def idle(self, tick: int) -> AVFrame:
        return AVFrame(video=picture(0), audio=np.zeros(SPT, np.int16))


class Recorder:
    """A sink that keeps (tick, frame, time emitted)."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.ticks: list[tuple[int, AVFrame, float]] = []

    def push(self, tick: int, frame: AVFrame) -> None:
        self.ticks.append((tick, frame, self.time.t))


async def run_until(stream: AVStream, sink: Recorder, n: int) -> None:
    """Run the tick loop until the sink has seen n ticks."""
    task = asyncio.create_task(stream.run())
    try:
        while len(sink.ticks) < n:
            await asyncio.sleep(0)
            assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def make_stream(time: FakeTime, capacity: int = 50, **options) -> tuple[AVStream, FrameQueue, Recorder, list]:
    queue = FrameQueue(capacity)
    said: list[tuple[str, str]] = []
    stream = AVStream(time.clock(), queue, Idle(), on_speech=lambda e, uid: said.append((e, uid)), **options)
    sink = Recorder(time)
    stream.attach(sink)
    return stream, queue, sink, said


# ---- frame queue ------------------------------------------------------------------------


async def test_a_full_queue_makes_the_producer_wait_and_a_get_lets_it_in():
    queue = FrameQueue(2)
    a, b, c = speech("u", 3)
    assert await queue.put(a) and await queue.put(b)
    third = asyncio.create_task(queue.put(c))
    await asyncio.sleep(0)
    assert not third.done() and len(queue) == 2
    assert queue.get_nowait() is a
    assert await third is True
    assert [queue.get_nowait(), queue.get_nowait(), queue.get_nowait()] == [b, c, None]


async def test_clear_refuses_a_producer_of_the_old_generation_even_one_already_waiting():
    queue = FrameQueue(1)
    old = queue.generation
    first, second = speech("old", 2)
    assert await queue.put(first, old)
    waiting = asyncio.create_task(queue.put(second, old))
    await asyncio.sleep(0)
    assert queue.clear() == [first]
    assert await waiting is False, "a frame of the cleared utterance slipped in after the clear"
    assert len(queue) == 0 and not queue.holds("old")
    assert await queue.put(second, old) is False  # a late producer is refused too
    (new,) = speech("new", 1)
    assert await queue.put(new, queue.generation) and queue.holds("new")


def test_a_queue_needs_room_for_one_frame():
    with pytest.raises(ValueError):
        FrameQueue(0)


# ---- the tick loop ----------------------------------------------------------------------


async def test_every_tick_leaves_at_its_due_time_and_the_timeline_never_drifts():
    time = FakeTime()
    stream, _, sink, _ = make_stream(time)
    await run_until(stream, sink, 1000)
    t0 = stream.clock.t0
    assert [tick for tick, _, _ in sink.ticks] == list(range(1000))
    for tick, _, at in sink.ticks:
        assert at == pytest.approx(t0 + tick / FPS, abs=1e-9)
    assert stream.stats.late_ticks == 0 and stream.stats.skipped_ticks == 0


async def test_an_utterance_plays_in_order_between_speech_start_and_end():
    time = FakeTime()
    stream, queue, sink, said = make_stream(time)
    await enqueue(queue, speech("u1", 5))
    await run_until(stream, sink, 8)
    assert shown(sink) == [200, 201, 202, 203, 204, 0, 0, 0]
    assert said == [("start", "u1"), ("end", "u1")]
    assert stream.stats.speech_frames == 5 and stream.stats.underruns == 0


async def test_an_underrun_mid_utterance_holds_the_picture_with_silence():
    time = FakeTime()
    stream, queue, sink, said = make_stream(time)
    frames = speech("u1", 4)
    await enqueue(queue, frames[:2])
    await run_until(stream, sink, 4)  # the renderer is late: ticks 2 and 3 find nothing
    await enqueue(queue, frames[2:])
    await run_until(stream, sink, 7)
    pictures = shown(sink)
    assert pictures[:6] == [200, 201, 201, 201, 202, 203], "the held picture is the last one shown"
    assert not sink.ticks[2][1].audio.any() and not sink.ticks[3][1].audio.any(), "held ticks are silent"
    assert stream.stats.underruns == 2
    assert said == [("start", "u1"), ("end", "u1")]
    assert pictures[6] == 0  # idle after the last frame, which is no underrun
    assert stream.stats.underruns == 2


async def test_a_short_stall_is_caught_up_in_a_burst_without_losing_a_tick():
    time = FakeTime()
    stream, _, sink, _ = make_stream(time)
    time.stall_next = [0, 0, 0, 0, 0, 0.130]  # the event loop is held 130 ms before tick 5
    await run_until(stream, sink, 20)
    ticks = [tick for tick, _, _ in sink.ticks]
    assert ticks == list(range(20)), "every tick is sent: audio stays whole"
    assert stream.stats.skipped_ticks == 0
    assert stream.stats.late_ticks >= 1
    # The burst sends the stalled ticks at once, and the clock is back on its timeline after it.
    t0 = stream.clock.t0
    late = [tick for tick, _, at in sink.ticks if at > t0 + tick / FPS + 1 / FPS]
    assert late and max(late) <= 8
    assert sink.ticks[-1][2] == pytest.approx(t0 + 19 / FPS)


async def test_a_long_stall_skips_ticks_instead_of_shifting_the_timeline():
    time = FakeTime()
    stream, _, sink, _ = make_stream(time)  # catches up at most fps/2 = 12 ticks
    time.stall_next = [0, 0, 0, 2.0]  # the event loop is held 2 s on the 4th wait
    await run_until(stream, sink, 20)
    ticks = [tick for tick, _, _ in sink.ticks]
    jumps = [(a, b) for a, b in zip(ticks, ticks[1:]) if b != a + 1]
    assert len(jumps) == 1, f"expected one skip, got {ticks}"
    (before, after), = jumps
    assert after - before - 1 == stream.stats.skipped_ticks > stream.max_catch_up
    assert after - before - 1 >= 2.0 * FPS - 2, "about two seconds of ticks were given up"
    t0 = stream.clock.t0
    resumed = ticks.index(after)
    for tick, _, at in sink.ticks[resumed + 1:]:
        assert at == pytest.approx(t0 + tick / FPS, abs=1e-9), "the timeline did not shift"


async def test_a_failing_sink_is_detached_and_the_others_keep_ticking():
    time = FakeTime()
    stream, _, sink, _ = make_stream(time)

    class Broken:
        def push(self, tick: int, frame: AVFrame) -> None:
            raise RuntimeError("encoder gone")

    stream.attach(Broken())
    await run_until(stream, sink, 10)
    assert [tick for tick, _, _ in sink.ticks] == list(range(10))
    assert stream.sinks == [sink]


# ---- interrupts ---------------------------------------------------------------------------


async def test_an_interrupt_stops_the_picture_on_the_next_tick_and_the_next_utterance_starts_cleanly():
    time = FakeTime()
    stream, queue, sink, said = make_stream(time)
    await enqueue(queue, speech("u1", 20))
    await run_until(stream, sink, 5)
    # Session.interrupt's order: drop queued frames, forget the utterance on air.
    dropped = queue.clear()
    assert len(dropped) == 15
    assert stream.end_utterance() == "u1"
    await run_until(stream, sink, 8)
    after = [frame for _, frame, _ in sink.ticks[5:8]]
    assert all(not f.is_speech and int(f.video[0, 0]) == 0 for f in after), "idle face right after the interrupt"
    assert stream.stats.underruns == 0, "an interrupted utterance is no underrun"
    await enqueue(queue, speech("u2", 3, value=100))
    await run_until(stream, sink, 12)
    assert said == [("start", "u1"), ("start", "u2"), ("end", "u2")]
    assert shown(sink)[8:11] == [100, 101, 102]


class OneFrameRenderer:
    """Renders each chunk as frames whose picture is the chunk's index (no model)."""

    width, height, fps = 4, 4, FPS

    def idle_frame(self, tick: int) -> np.ndarray:
        return picture(0)

    def begin(self, chunk: SpeechChunk, tick: int):
        n = -(-len(chunk.audio) // SPT)

        class Source:
            n_frames = n

            def render(self, start: int, count: int) -> list[np.ndarray]:
                return [picture(50 + start + i) for i in range(count)]

        return Source()


async def test_a_speaker_cancelled_by_an_interrupt_leaves_nothing_behind_in_the_queue():
    """The speaker blocks on a full queue; the interrupt clears it and cancels the speaker:
    neither the frame it waited to put nor its closing 'last' frame may reach the clock."""
    queue = FrameQueue(3)
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=None, renderer=OneFrameRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0)
        chunk = SpeechChunk(text="", audio=np.full(SPT * 10, 500, np.int16), sample_rate=16000)
        task = asyncio.create_task(speaker.speak_chunks("u1", [chunk]))
        while len(queue) < 3:
            await asyncio.sleep(0.001)
        queue.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.01)
        assert len(queue) == 0 and not queue.holds("u1")


async def test_an_uninterrupted_speaker_ends_its_utterance_with_one_last_frame():
    queue = FrameQueue(50)
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=None, renderer=OneFrameRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0)
        chunk = SpeechChunk(text="", audio=np.full(SPT * 7 + 10, 500, np.int16), sample_rate=16000)
        assert await speaker.speak_chunks("u1", [chunk]) == 8
    frames = [queue.get_nowait() for _ in range(len(queue))]
    assert [f.first for f in frames] == [True] + [False] * 7
    assert [f.last for f in frames] == [False] * 7 + [True]
    # A renderer this fast draws every picture, from the first tick of the voice on (none repeated
    # while the queue is still short).
    assert [int(f.video[0, 0]) for f in frames] == list(range(50, 58)) and speaker.repeated_frames == 0
    assert frames[-1].audio[10:].any() == False and frames[-1].audio[:10].all()  # noqa: E712


class CountingVoice:
    """Says every text as one 3-tick chunk, counting what it was asked to say."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def synthesize(self, text: str):
        self.said.append(text)
        yield SpeechChunk(text=text, audio=np.full(SPT * 3, 500, np.int16), sample_rate=16000)


async def test_a_held_utterance_is_synthesized_at_once_and_queued_only_when_let_go():
    """`ready` (a turn held until the user's silence is long enough): the voice is made meanwhile, no
    frame reaches the queue before it returns, and the utterance starts on the tick it is let go on."""
    queue = FrameQueue(50)
    go = asyncio.Event()
    tick = {"now": 0}
    voice = CountingVoice()
    begun_at: list[int] = []

    class TickRecordingRenderer(OneFrameRenderer):
        def begin(self, chunk: SpeechChunk, tick: int):
            begun_at.append(tick)
            return super().begin(chunk, tick)

    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=voice, renderer=TickRecordingRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: tick["now"])
        first_audio = []
        task = asyncio.create_task(speaker.speak("u1", one_text("Hello there."),
                                                 on_first_audio=lambda: first_audio.append(tick["now"]),
                                                 ready=go.wait))
        for _ in range(200):
            await asyncio.sleep(0.002)
        assert voice.said == ["Hello there."] and first_audio == [0], "synthesized while held"
        assert len(queue) == 0, "nothing queued before it is let go"
        tick["now"] = 40
        go.set()
        assert await task == 3
    frames = [queue.get_nowait() for _ in range(len(queue))]
    assert [f.first for f in frames] == [True, False, False] and frames[-1].last
    assert begun_at == [40], "its lip-sync is laid on the tick it was let go on"


class PausingVoice:
    """Says each sentence as Piper does: 300 ms of silence (its "^"), the voice, 100 ms of silence ("$")."""

    PAUSE, VOICE, TAIL = 0.3, 0.4, 0.1

    def synthesize(self, text: str):
        for sentence in re.findall(r"[^.!?]+[.!?]?", text):
            rate = 16000
            audio = np.concatenate([np.zeros(int(self.PAUSE * rate), np.int16),
                                    np.full(int(self.VOICE * rate), 3000, np.int16),
                                    np.zeros(int(self.TAIL * rate), np.int16)])
            marks = [("^", 0.0, self.PAUSE), ("a", self.PAUSE, self.PAUSE + self.VOICE),
                     ("$", self.PAUSE + self.VOICE, self.PAUSE + self.VOICE + self.TAIL)]
            yield SpeechChunk(text=sentence.strip(), audio=audio, sample_rate=rate,
                              phonemes=tuple(PhonemeTiming(*m) for m in marks))


async def test_an_utterance_opens_on_its_voice_and_keeps_the_pauses_between_its_sentences():
    """The voice's pause before a sentence is cut to 20 ms where the utterance opens (silence there
    is only a slower answer); between two sentences it stays whole."""
    queue = FrameQueue(100)
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=PausingVoice(), renderer=OneFrameRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0)
        await speaker.speak("u1", one_text("Hello there. How are you?"))
    audio = np.concatenate([queue.get_nowait().audio for _ in range(len(queue))])
    voiced = np.flatnonzero(audio)
    assert voiced[0] / 16000 == pytest.approx(0.02, abs=0.002), "the opening pause is cut to 20 ms"
    gap = np.diff(voiced).max() - 1
    assert gap / 16000 == pytest.approx(PausingVoice.TAIL + PausingVoice.PAUSE, abs=0.002), \
        "the pause between the sentences is whole"


class SlowRenderer(OneFrameRenderer):
    """Each picture takes 100 ms to draw: four times a tick."""

    def begin(self, chunk: SpeechChunk, tick: int):
        source = super().begin(chunk, tick)
        draw = source.render

        def render(start: int, count: int) -> list[np.ndarray]:
            time.sleep(0.1 * count)
            return draw(start, count)

        source.render = render
        return source


async def test_a_renderer_slower_than_the_clock_repeats_pictures_and_the_voice_keeps_its_ticks():
    """Fed as the clock would take them, a renderer four times too slow gets pictures repeated
    rather than the queue running dry; every tick still carries its own audio, in order."""
    queue = FrameQueue(8)
    taken: list[AVFrame] = []
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=None, renderer=SlowRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0)
        chunk = SpeechChunk(text="", audio=np.arange(SPT * 30, dtype=np.int16), sample_rate=16000)
        task = asyncio.create_task(speaker.speak_chunks("u1", [chunk]))
        dry = 0
        while not task.done() or len(queue):
            await asyncio.sleep(1 / FPS)
            frame = queue.get_nowait()
            if frame is not None:
                taken.append(frame)
            elif taken:
                dry += 1
        await task
    assert [int(f.audio[0]) for f in taken] == [i * SPT for i in range(30)], "a tick lost or moved its audio"
    pictures = [int(f.video[0, 0]) for f in taken]
    assert dry <= 2, f"the queue ran dry on {dry} ticks after the voice began"
    assert speaker.repeated_frames > 10 and pictures == sorted(pictures), pictures


# ---- speculation ----------------------------------------------------------------------------


class ScriptedLLM:
    """A reply stream that records whether it was opened, how far it was read, and closed."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.opened: list[list[dict]] = []
        self.closed = 0
        self.sent = 0

    async def stream(self, messages: list[dict]):
        self.opened.append(messages)
        try:
            for word in self.words:
                await asyncio.sleep(0)
                self.sent += 1
                yield word
        finally:
            self.closed += 1


def spawner(tasks: list[asyncio.Task]):
    def spawn(coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        tasks.append(task)
        return task
    return spawn


async def test_speculation_dropped_when_the_user_goes_on_stops_asr_and_the_reply():
    heard = asyncio.Event()
    llm = ScriptedLLM(["Paris ", "is ", "the ", "capital."])
    tasks: list[asyncio.Task] = []

    async def recognise(audio):
        await heard.wait()
        return "what is the capital of"

    spec = Speculation(np.zeros(1600, np.float32), recognise, lambda text: [{"role": "user", "content": text}],
                       llm.stream, spawner(tasks))
    await asyncio.sleep(0)
    spec.cancel()  # SpeechResume: the user goes on speaking before ASR finished
    heard.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert llm.opened == [], "a reply was started for a dropped speculation"
    with pytest.raises(asyncio.CancelledError):
        await spec.transcript()


async def test_speculation_dropped_after_the_reply_began_closes_the_reply_stream():
    llm = ScriptedLLM(["word "] * 1000)
    tasks: list[asyncio.Task] = []

    async def recognise(audio):
        return "tell me a story"

    spec = Speculation(np.zeros(1600, np.float32), recognise, lambda text: [{"role": "user", "content": text}],
                       llm.stream, spawner(tasks))
    assert await spec.transcript() == "tell me a story"
    while llm.sent < 3:
        await asyncio.sleep(0)
    spec.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert llm.closed == 1, "the chat model's stream was left open"
    assert llm.sent < 1000


async def test_a_speculative_reply_is_adopted_only_for_the_same_messages():
    tasks: list[asyncio.Task] = []

    async def recognise(audio):
        return "hello"

    def messages_for(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    llm = ScriptedLLM(["Hi ", "there."])
    spec = Speculation(np.zeros(1600, np.float32), recognise, messages_for, llm.stream, spawner(tasks))
    await spec.transcript()
    reply = spec.reply(messages_for("hello"))
    assert isinstance(reply, Prefetch)
    assert [w async for w in reply] == ["Hi ", "there."]

    other = ScriptedLLM(["stale"] * 100)
    spec2 = Speculation(np.zeros(1600, np.float32), recognise, messages_for, other.stream, spawner(tasks))
    await spec2.transcript()
    assert spec2.reply(messages_for("hello, and what else")) is None  # the history moved on
    await asyncio.gather(*tasks, return_exceptions=True)
    assert other.closed == 1


# ---- a resting clock --------------------------------------------------------------------


class SteppedTime:
    """A monotonic clock moved only by the test (`advance`); sleepers wake when their time comes."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + delay, future))
        await future

    async def advance(self, seconds: float) -> None:
        end = self.t + seconds
        while True:
            await settle()
            pending = [d for d, f in self._sleepers if not f.done()]
            if not pending or min(pending) > end + 1e-12:
                break
            self.t = max(self.t, min(pending))
            for item in [s for s in self._sleepers if s[0] <= self.t + 1e-12]:
                self._sleepers.remove(item)
                if not item[1].done():
                    item[1].set_result(None)
        self.t = end
        await settle()

    def clock(self, fps: int = FPS) -> MediaClock:
        return MediaClock(fps, now=self.now, sleep=self.sleep)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class StillIdle(Idle):
    still = True


class RestingRecorder(Recorder):
    rests_when_still = True


async def started(stream: AVStream) -> asyncio.Task:
    stream.clock.start()
    task = asyncio.create_task(stream.run())
    await settle()
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("still, rests", [(True, True), (False, True), (True, False)])
async def test_a_still_idle_clock_emits_one_tick_a_second_only_when_every_sink_allows_it(still, rests):
    time = SteppedTime()
    sink = (RestingRecorder if rests else Recorder)(time)
    stream = AVStream(time.clock(), FrameQueue(10), StillIdle() if still else Idle())
    stream.attach(sink)
    task = await started(stream)
    await time.advance(5.0)
    await stop(task)
    emitted = [tick for tick, _, _ in sink.ticks]
    if still and rests:
        assert emitted == [0, 25, 50, 75, 100, 125]
    else:
        assert emitted == list(range(126))
    t0 = stream.clock.t0
    for tick, _, at in sink.ticks:
        assert at == pytest.approx(t0 + tick / FPS, abs=1e-9), "a rest never moves the timeline"
    assert stream.stats.ticks == 126 and stream.stats.idle_frames == 126
    assert stream.stats.rested_ticks == 126 - len(emitted)


async def test_a_frame_queued_during_a_rest_leaves_on_the_tick_promised_to_its_producer():
    time = SteppedTime()
    queue = FrameQueue(10)
    said: list[tuple[str, str]] = []
    stream = AVStream(time.clock(), queue, StillIdle(), on_speech=lambda e, uid: said.append((e, uid)))
    sink = RestingRecorder(time)
    stream.attach(sink)
    task = await started(stream)
    await time.advance(0.5)                 # resting, between ticks 12 and 13
    start = stream.next_tick()
    assert start == 13, "the next tick due, not the last one emitted"
    await enqueue(queue, speech("u1", 3))
    await time.advance(1.0)
    await stop(task)
    assert [tick for tick, _, _ in sink.ticks] == [0, 13, 14, 15]
    assert shown(sink) == [0, 200, 201, 202]
    t0 = stream.clock.t0
    assert [at for _, _, at in sink.ticks[1:]] == pytest.approx([t0 + t / FPS for t in (13, 14, 15)])
    assert said == [("start", "u1"), ("end", "u1")]


async def test_a_sink_that_needs_every_tick_ends_the_rest_when_it_joins():
    time = SteppedTime()
    stream = AVStream(time.clock(), FrameQueue(10), StillIdle())
    resting = RestingRecorder(time)
    stream.attach(resting)
    task = await started(stream)
    await time.advance(0.5)
    every = Recorder(time)
    stream.attach(every)
    await time.advance(0.2)                 # to tick 17
    await stop(task)
    assert [tick for tick, _, _ in every.ticks] == [13, 14, 15, 16, 17]
    assert [tick for tick, _, _ in resting.ticks] == [0, 13, 14, 15, 16, 17]


# ---- resting through speech whose voice went ahead --------------------------------------------


class VoiceAheadRecorder(RestingRecorder):
    carries_audio = False  # (a viseme session's socket: its voice went ahead in messages of its own)


def still_speech(uid: str, n: int, video: np.ndarray) -> list[AVFrame]:
    """n frames of one utterance, all showing the same picture (a client-drawn face's blank)."""
    audio = np.full(SPT, 1000, np.int16)
    return [AVFrame(video=video, audio=audio, utterance_id=uid, first=i == 0, last=i == n - 1) for i in range(n)]


async def feed(queue: FrameQueue, frames: list[AVFrame], starts: list[int], next_tick) -> None:
    """Put frames as the speaker does, as room appears; notes the tick promised to the first one."""
    starts.append(next_tick() + len(queue))
    for frame in frames:
        if not await queue.put(frame):
            return


@pytest.mark.parametrize("voice_ahead", [True, False])
async def test_a_clock_rests_through_speech_only_for_sinks_whose_voice_went_ahead(voice_ahead):
    """Still pictures while speaking: the clock sleeps through them when no sink needs their audio,
    and still emits the utterance's first and last frame, and a frame a second, on their ticks."""
    time = SteppedTime()
    queue = FrameQueue(8)
    said: list[tuple[str, str, int]] = []
    stream = AVStream(time.clock(), queue, StillIdle(),
                      on_speech=lambda e, uid: said.append((e, uid, stream.tick)))
    sink = (VoiceAheadRecorder if voice_ahead else RestingRecorder)(time)
    stream.attach(sink)
    task = await started(stream)
    await time.advance(0.5)
    starts: list[int] = []
    blank = picture(7)
    producer = asyncio.create_task(feed(queue, still_speech("u1", 30, blank) + still_speech("u2", 30, blank),
                                        starts, stream.next_tick))
    await time.advance(4.0)
    await stop(task)
    await stop(producer)
    first = starts[0]
    emitted = [tick for tick, frame, _ in sink.ticks if frame.is_speech]
    assert said == [("start", "u1", first), ("end", "u1", first + 29), ("start", "u2", first + 30),
                    ("end", "u2", first + 59)], "each utterance's edges are on their ticks"
    assert emitted[0] == first and emitted[-1] == first + 59
    if voice_ahead:
        assert len(emitted) <= 60 // 7 + 5, f"{len(emitted)} speech ticks emitted of 60"
        assert stream.stats.rested_ticks >= 60 - len(emitted)
    else:
        assert emitted == list(range(first, first + 60)), "a sink that takes the audio gets every tick"
    t0 = stream.clock.t0
    assert all(at == pytest.approx(t0 + tick / FPS, abs=1e-9) for tick, _, at in sink.ticks), \
        "every frame emitted leaves on its own tick"
    assert stream.stats.speech_frames == 60 and stream.stats.ticks == stream.tick, "a tick lost or counted twice"
    assert [t for t, _, _ in sink.ticks] == sorted({t for t, _, _ in sink.ticks})


async def test_an_interrupt_while_resting_through_speech_lets_the_next_utterance_leave_on_its_promised_tick():
    """Interrupted while the frames it took are still playing out: the next utterance's frames
    leave on the tick promised to their producer, within the queue's length of the interrupt."""
    time = SteppedTime()
    queue = FrameQueue(8)
    said: list[tuple[str, str, int]] = []
    stream = AVStream(time.clock(), queue, StillIdle(),
                      on_speech=lambda e, uid: said.append((e, uid, stream.tick)))
    sink = VoiceAheadRecorder(time)
    stream.attach(sink)
    task = await started(stream)
    blank = picture(7)
    starts: list[int] = []
    producer = asyncio.create_task(feed(queue, still_speech("u1", 60, blank), starts, stream.next_tick))
    await time.advance(0.62)
    assert stream.stats.rested_ticks > 0 and said == [("start", "u1", starts[0])]
    producer.cancel()
    queue.clear()
    stream.end_utterance()
    interrupted_at = stream.clock.current_tick()
    promised = stream.next_tick()
    assert interrupted_at < promised <= interrupted_at + 8
    await enqueue(queue, still_speech("u2", 3, blank))
    await time.advance(0.5)
    await stop(task)
    assert said[1:] == [("start", "u2", promised), ("end", "u2", promised + 2)]
    t0 = stream.clock.t0
    assert all(at == pytest.approx(t0 + tick / FPS, abs=1e-9) for tick, _, at in sink.ticks)
    assert stream.stats.ticks == stream.tick
