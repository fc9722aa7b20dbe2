"""Speech into frames: text -> TTS -> renderer -> AVFrames in the queue, ahead of the clock."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import Executor
from typing import AsyncIterable, Awaitable, Callable, Iterator, Protocol

import numpy as np

from models.lead_phrase import bounded_pieces, ends_sentence, split_lead
from models.lipsync.renderer import LipSyncRenderer
from models.speech import SpeechChunk, tighten
from tracks.avframe import AVFrame
from tracks.frame_queue import FrameQueue

log = logging.getLogger(__name__)

RENDER_BATCH = 4  # frames per trip to the worker thread: amortises hand-off, keeps first-frame latency low
FIRST_BATCH = 1   # an utterance's first picture goes alone: it is what the listener waits for
# Share of the time the waiting frames take to play that rendering may use: the rest absorbs a
# slower frame than the recent ones (a busy machine) before the clock finds the queue empty.
PACE_MARGIN = 0.5


class Voice(Protocol):
    def synthesize(self, text: str) -> Iterator[SpeechChunk]: ...


class SpeechFailed(Exception):
    """TTS or rendering failed part-way; `stage` says which."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} failed: {cause}")
        self.stage = stage
        self.cause = cause


def split_ticks(audio: np.ndarray, samples_per_tick: int) -> list[np.ndarray]:
    """Cut int16 audio into whole ticks, padding the last with silence."""
    n = max(1, -(-len(audio) // samples_per_tick))
    padded = np.zeros(n * samples_per_tick, dtype=np.int16)
    padded[: len(audio)] = audio
    return list(padded.reshape(n, samples_per_tick))


class RenderPace:
    """How many frames the renderer can draw before the clock needs them, from what a frame has
    cost lately (seconds, trip to the render thread included) and the frames waiting to play."""

    def __init__(self, fps: int, margin: float = PACE_MARGIN) -> None:
        self.frame_s = 1 / fps
        self.margin = margin
        self.cost: float | None = None  # seconds per frame, smoothed

    def record(self, frames: int, seconds: float) -> None:
        if frames:
            per_frame = seconds / frames
            self.cost = per_frame if self.cost is None else 0.7 * self.cost + 0.3 * per_frame

    def affordable(self, waiting: int, wanted: int) -> int:
        """Of `wanted` frames, how many can be drawn while `waiting` frames play (0: none in time;
        all while the cost is still unknown)."""
        if self.cost is None or self.cost <= 0:
            return wanted
        return max(0, min(wanted, int(waiting * self.frame_s * self.margin / self.cost)))


class Speaker:
    """Produces one utterance at a time into the FrameQueue; the clock plays them."""

    def __init__(
        self,
        voice: Voice,
        renderer: LipSyncRenderer,
        queue: FrameQueue,
        executor: Executor,
        samples_per_tick: int,
        next_tick: "TickSource",
        tts_executor: Executor | None = None,
        lead_words: int = 0,
        on_cues: "CueCallback | None" = None,
    ) -> None:
        self.voice = voice
        self.renderer = renderer
        self.queue = queue
        self.executor = executor  # rendering only: a long TTS call must never hold up a render batch
        self.tts_executor = tts_executor or executor
        self.samples_per_tick = samples_per_tick
        self.next_tick = next_tick
        self.lead_words = lead_words  # longest opening phrase synthesized on its own (0: whole sentences)
        self.repeated_frames = 0  # frames whose picture was repeated because rendering was late
        self.pace = RenderPace(renderer.fps)
        self.synthesis_cpu_s = 0.0  # CPU time the voice took (its worker thread's), for the CPU benches
        self.on_cues = on_cues    # mouth cues of each chunk, from renderers that make them (viseme mode)

    async def speak(self, utterance_id: str, texts: AsyncIterable[str],
                    on_first_audio: Callable[[], None] | None = None,
                    ready: Callable[[], Awaitable[None]] | None = None) -> int:
        """Queue the frames of `texts` as one utterance; returns the number of frames queued. With `ready`,
        synthesis starts at once but no frame is queued before it returns.

        Cancelling the caller stops TTS and rendering; frames already queued are the
        caller's to clear (FrameQueue.clear), and anything in flight is refused by the
        queue's generation check.
        """
        chunks: asyncio.Queue[SpeechChunk | BaseException | None] = asyncio.Queue(maxsize=2)
        tts = asyncio.create_task(self._synthesize(texts, chunks), name=f"tts-{utterance_id}")
        try:
            return await self._play(utterance_id, chunks, on_first_audio, ready)
        finally:
            tts.cancel()

    async def speak_chunks(self, utterance_id: str, speech: list[SpeechChunk]) -> int:
        """Queue ready-made speech (e.g. a user's WAV, no phonemes) as one utterance."""
        chunks: asyncio.Queue[SpeechChunk | BaseException | None] = asyncio.Queue()
        for chunk in speech:
            chunks.put_nowait(chunk)
        chunks.put_nowait(None)
        return await self._play(utterance_id, chunks, None)

    async def _play(self, utterance_id: str, chunks: asyncio.Queue,
                    on_first_audio: Callable[[], None] | None,
                    ready: Callable[[], Awaitable[None]] | None = None) -> int:
        generation = self.queue.generation
        loop = asyncio.get_running_loop()
        held: AVFrame | None = None
        last_video: np.ndarray | None = None
        queued = 0
        try:
            while (chunk := await chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise SpeechFailed("tts", chunk)
                if on_first_audio is not None:
                    on_first_audio()
                    on_first_audio = None
                if ready is not None:
                    # Before the start tick is read: the utterance starts on the clock when let go.
                    await ready()
                    ready = None
                # (the frame held back, not yet in the queue, plays before this chunk too)
                start_tick = self.next_tick() + len(self.queue) + (held is not None)
                try:
                    source = await loop.run_in_executor(self.executor, self.renderer.begin, chunk, start_tick)
                except Exception as exc:
                    raise SpeechFailed("render", exc) from exc
                audio = split_ticks(chunk.audio, self.samples_per_tick)
                n = min(source.n_frames, len(audio))
                cues = getattr(source, "cues", None)
                if cues is not None and self.on_cues is not None:
                    # Ahead of the chunk's first frame: its cues, and the voice those frames carry.
                    self.on_cues(utterance_id, start_tick, cues, np.concatenate(audio[:n]) if n else chunk.audio[:0])
                last_video = None  # each chunk opens with a rendered batch
                start = 0
                while start < n:
                    opening = start == 0
                    count = min(FIRST_BATCH if queued == 0 and held is None else RENDER_BATCH, n - start)
                    # Only what can be drawn before the clock needs it (while the frames queued and
                    # the held one play); none: repeat the last picture for this batch, so the
                    # audio keeps flowing on time (video drops frames, sync is kept).
                    waiting = len(self.queue) + (held is not None)
                    drawn = count if opening else self.pace.affordable(waiting, count)
                    if not drawn:
                        videos = [last_video] * count
                        self.repeated_frames += count
                    else:
                        count = drawn
                        began = time.perf_counter()
                        try:
                            videos = (source.render(start, count) if getattr(source, "instant", False) else
                                      await loop.run_in_executor(self.executor, source.render, start, count))
                        except Exception as exc:
                            raise SpeechFailed("render", exc) from exc
                        # A chunk's first pictures also pay for setting it up: they count only as a
                        # first, cautious estimate (a slow renderer must not run the queue dry on
                        # the session's first words; a fast one soon shows its true cost).
                        if not opening or self.pace.cost is None:
                            self.pace.record(len(videos), time.perf_counter() - began)
                        last_video = videos[-1]
                    for i, video in enumerate(videos):
                        frame = AVFrame(video=video, audio=audio[start + i], utterance_id=utterance_id,
                                        first=held is None and queued == 0)
                        # A chunk's last frame is held back until it is known whether another
                        # chunk follows, so the utterance's true last frame can be marked as such.
                        if held is not None:
                            if not await self.queue.put(held, generation):
                                return queued
                            queued += 1
                            held = None
                        if start + i < n - 1:
                            if not await self.queue.put(frame, generation):
                                return queued
                            queued += 1
                        else:
                            held = frame
                    start += count
        finally:
            # Whatever happened, a started utterance ends with a last frame on the clock.
            if held is not None and self.queue.generation == generation:
                if await self.queue.put(dataclasses.replace(held, last=True), generation):
                    queued += 1
        return queued

    async def _synthesize(self, texts: AsyncIterable[str], out: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        first = True
        # The pause a voice puts before a sentence is only wanted between sentences: before the
        # utterance's first words it is silence heard as a slower answer (Piper: p50 46 ms, up to 400 ms,
        # bench/bench_tts.py), so the first chunk starts as a sentence after an open one would.
        trim_head = True  # the next chunk opens the utterance or goes on with a sentence left open
        try:
            async for text in texts:
                pieces = split_lead(text, self.lead_words) if first else [text]
                pieces = [part for piece in pieces for part in bounded_pieces(piece)]
                first = False
                for piece in pieces:
                    chunks = self.voice.synthesize(piece)
                    while True:
                        chunk, cpu_s = await loop.run_in_executor(self.tts_executor, _timed_next, chunks)
                        self.synthesis_cpu_s += cpu_s
                        if chunk is None:
                            break
                        # Where one sentence was said in two texts, no sentence pause between them.
                        open_sentence = not ends_sentence(chunk.text or piece)
                        await out.put(tighten(chunk, head=trim_head, tail=open_sentence))
                        trim_head = open_sentence
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to speak(), which reports it
            log.warning("tts failed: %s", exc)
            await out.put(exc)
            return
        await out.put(None)


def _timed_next(chunks: Iterator[SpeechChunk]) -> tuple[SpeechChunk | None, float]:
    """The next chunk (None at the end) and the CPU seconds this thread spent making it."""
    start = time.thread_time()
    chunk = next(chunks, None)
    return chunk, time.thread_time() - start


# (utterance id, first tick of the chunk, its MouthCues, its audio: int16, whole ticks)
CueCallback = Callable[[str, int, list, np.ndarray], None]


class TickSource(Protocol):
    def __call__(self) -> int: ...


async def one_text(text: str) -> AsyncIterable[str]:
    """A text stream of a single text (for `say`)."""
    yield text
