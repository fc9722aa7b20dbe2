"""One talking avatar: its clock, frame queue, speaker, conversation and events.

The session knows no transport. What it hears and where it goes are parts: a listener (the
conversation) passed in when it is built, microphone audio handed to `hear` by whichever
input has a microphone, and outputs (the browser's WebRTC peer, viewers, HLS, a recording,
an RTMP push) added with `add_output`. Each output takes the ticks of the one clock.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import unicodedata
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, AsyncIterable, Awaitable, Callable, Protocol

import numpy as np

from models.lipsync.renderer import LipSyncRenderer
from models.speech import SpeechChunk
from rtc_server.config import Config
from rtc_server.events import BadMessage, EventChannel, InterruptMessage, SayMessage, State, parse_client_message
from rtc_server.outputs.base import Output
from rtc_server.speaker import Speaker, SpeechFailed, Voice, one_text
from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.frame_queue import FrameQueue
from tracks.encode_thread import SharedFeed
from tracks.h264_feed import H264Feed
from tracks.viewer_feed import ViewerFeed
from tracks.stream import AVStream
from tracks.sync_test import SyncTestPattern

if TYPE_CHECKING:
    from rtc_server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class Listener(Protocol):
    """What answers the user: the conversation (rtc_server.conversation.Conversation)."""

    turns: Any

    def hear(self, frame: Any) -> None:
        """Microphone audio (an av.AudioFrame of any rate and layout)."""

    def chat(self, text: str) -> dict:
        """A typed user turn."""

    def cancel_turn(self) -> None:
        """Stop the reply being written (the session was interrupted)."""


ListenerFactory = Callable[["Session"], Listener]


class AvatarIdle:
    """Idle source for normal sessions: the renderer's idle face and silence."""

    def __init__(self, renderer: LipSyncRenderer, samples_per_tick: int) -> None:
        self.renderer = renderer
        self.silence = np.zeros(samples_per_tick, dtype=np.int16)
        self.still = renderer.still_idle  # the same picture every tick: the clock may rest

    def idle(self, tick: int) -> AVFrame:
        return AVFrame(video=self.renderer.idle_frame(tick), audio=self.silence)


class Session:
    """Owns everything of one talking avatar and cancels all of it on close."""

    def __init__(
        self,
        config: Config,
        voice: Voice,
        renderer: LipSyncRenderer,
        executor: Executor,
        *,
        work_executor: Executor | None = None,
        mode: str = "normal",
        avatar: str = "",
        listener: ListenerFactory | None = None,
        listen: bool = True,
        persona: str | None = None,
        barge_in: str | None = None,
        language: str | None = None,
        on_closed: Callable[["Session"], None] | None = None,
        metrics: "ServerMetrics | None" = None,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.config = config
        self.mode = mode
        self.avatar = avatar
        self.created = time.time()
        self.closed = False
        self._on_closed = on_closed
        self.metrics = metrics
        self.executor = executor
        self.renderer = renderer
        self.clock = MediaClock(config.fps)
        self.queue = FrameQueue(config.queue_frames)
        if mode == "sync-test":
            idle = SyncTestPattern(renderer.width, renderer.height, config.fps, config.sample_rate)
        else:
            idle = AvatarIdle(renderer, config.samples_per_tick)
        self.stream = AVStream(self.clock, self.queue, idle, on_speech=self._on_speech)
        self.events = EventChannel()
        # One H.264 + AAC encoding for all outputs that mux it (HLS, record, RTMP), made on first use;
        # its keyframe interval is the HLS segment length.
        self.encodings = SharedFeed(
            lambda: H264Feed(renderer.width, renderer.height, config.fps, config.sample_rate,
                             kbps=config.h264_kbps, gop=max(1, round(config.hls_segment_s * config.fps)),
                             encoder=config.h264_encoder),
            attach=self.stream.attach, detach=self.stream.detach)
        # One VP8 + Opus encoding for all WebRTC viewers (POST /sessions/{id}/viewers).
        self.viewer_feed = SharedFeed(
            lambda: ViewerFeed(self.clock, config.sample_rate, renderer.width, renderer.height,
                               config.video_max_kbps, asyncio.get_running_loop()),
            attach=self.stream.attach, detach=self.stream.detach)
        self.speaker = Speaker(voice, renderer, self.queue, executor, config.samples_per_tick,
                               next_tick=self.stream.next_tick, tts_executor=work_executor,
                               lead_words=config.lead_words, on_cues=self._on_cues)
        self.state: State = "idle"
        self.outputs: dict[str, Output] = {}
        self._tasks: set[asyncio.Task] = set()
        self._utterances: dict[str, asyncio.Task] = {}  # accepted and not yet ended, in order
        self._speak_lock = asyncio.Lock()
        self._utterance_count = 0
        # Per utterance: what to call when its first frame leaves, and when it ends without ever playing.
        self._on_air_callbacks: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {}
        # Whether microphone audio is heard at all; typed chat works either way.
        self.listen = listen
        self.persona = persona      # this session's system prompt, instead of the server's
        self.barge_in = barge_in    # on | clear | off, instead of the server's --barge-in
        self.language = language    # what the user speaks, instead of the server's --language
        self.conversation: Listener | None = listener(self) if listener is not None else None

    def start(self) -> None:
        """Start the clock (once); outputs added before or after all take its ticks."""
        if not self.clock.started and not self.closed:
            self.clock.start()
            self.spawn(self.stream.run(), "clock")

    # ---- inputs and outputs ------------------------------------------------------------

    def hear(self, frame: Any) -> None:
        """Microphone audio from any input (a WebRTC track, a WebSocket)."""
        if self.listen and self.conversation is not None:
            self.conversation.hear(frame)

    async def add_output(self, output: Output) -> Output:
        """Open `output` on this session; raises what its open raises (OutputError for bad input)."""
        if self.closed:
            raise RuntimeError("the session has ended")
        self.outputs[output.id] = output
        try:
            await output.open(self)
        except BaseException:
            self.outputs.pop(output.id, None)
            await output.stop()
            raise
        log.info("session %s: output %s added", self.id, output.id)
        return output

    async def remove_output(self, output_id: str, reason: str = "removed") -> bool:
        """Stop one output; the session and its other outputs go on. False if there is none."""
        output = self.outputs.get(output_id)
        if output is None:
            return False
        if output.state != "finished":
            await output.stop()
        if output.state != "finished":  # a finished recording stays listed, with its download
            self.outputs.pop(output_id, None)
        log.info("session %s: output %s stopped (%s)", self.id, output_id, reason)
        return True

    # ---- speech ------------------------------------------------------------------------

    def new_utterance_id(self) -> str:
        self._utterance_count += 1
        return f"{self.id}-{self._utterance_count}"

    def say(self, text: str) -> str:
        """Speak `text` verbatim after whatever is already queued; returns the utterance id."""
        return self.speak(one_text(text))

    def speak(self, texts: AsyncIterable[str], utterance_id: str | None = None,
              on_first_audio: Callable[[], None] | None = None,
              ready: Callable[[], Awaitable[None]] | None = None) -> str:
        """Speak a stream of texts (e.g. LLM clauses) as one utterance; with `ready`, not heard before it returns."""
        uid = utterance_id or self.new_utterance_id()
        return self._queue_utterance(uid, lambda: self.speaker.speak(uid, texts, on_first_audio, ready))

    def _queue_utterance(self, uid: str, produce: Callable[[], Awaitable[int]]) -> str:
        """Produce an utterance after those already accepted; every one ends with a speech_end."""
        limit = self.config.max_queued_utterances
        if len(self._utterances) >= limit:
            raise SpeechQueueFull(f"{len(self._utterances)} utterances are waiting or playing (limit {limit}, "
                                  "--max-queued-utterances); wait for a speech_end or interrupt")
        self._utterances[uid] = self.spawn(self._run_utterance(uid, produce), f"utterance-{uid}")
        return uid

    def speak_audio(self, pcm: np.ndarray) -> str:
        """Play int16 mono audio at the output rate with lip-sync read from the audio itself."""
        uid = self.new_utterance_id()
        chunk = SpeechChunk(text="", audio=pcm, sample_rate=self.config.sample_rate, phonemes=None)
        return self._queue_utterance(uid, lambda: self.speaker.speak_chunks(uid, [chunk]))

    def watch_utterance(self, uid: str, on_air: Callable[[], None],
                        on_unheard: Callable[[], None] | None = None) -> None:
        """Call `on_air` when the first frame of `uid` leaves on the clock, or `on_unheard` if it ends before
        (interrupted, or its synthesis failed)."""
        self._on_air_callbacks[uid] = (on_air, on_unheard)

    async def _run_utterance(self, uid: str, produce: Callable[[], Awaitable[int]]) -> None:
        """Await an utterance's production in turn; end it here if nothing of it will ever play."""
        async with self._speak_lock:
            try:
                queued = await produce()
            except SpeechFailed as exc:
                self.report_error(exc.stage, f"speech {exc.stage} failed: {exc.cause}")
                queued = 0
        if uid in self._utterances and not self._on_air(uid) and queued == 0:
            self._end_utterance(uid, interrupted=True)

    def _on_air(self, uid: str) -> bool:
        return self.stream.current_utterance == uid or self.queue.holds(uid)

    @property
    def speaking(self) -> bool:
        """True while an utterance is being produced or played."""
        return bool(self._utterances)

    def interrupt(self) -> list[str]:
        """Stop talking now: cancel the reply being written, synthesis and rendering, drop queued frames."""
        if self.conversation is not None:
            self.conversation.cancel_turn()  # a reply still being written must not start speaking later
        ended = list(self._utterances)
        for uid in ended:
            task = self._utterances[uid]
            task.cancel()
        self.queue.clear()
        self.stream.end_utterance()
        for uid in ended:
            self._end_utterance(uid, interrupted=True)
        if ended:
            log.info("session %s: interrupted %d utterance(s)", self.id, len(ended))
        return ended

    def _on_speech(self, event: str, uid: str) -> None:
        if event == "start":
            callbacks = self._on_air_callbacks.pop(uid, None)
            if callbacks is not None:
                callbacks[0]()
            self.events.send({"type": "speech_start", "utterance_id": uid})
            self.set_state("speaking")
        elif uid in self._utterances:
            self._end_utterance(uid, interrupted=False)

    def _on_cues(self, uid: str, start_tick: int, cues: list, audio: np.ndarray) -> None:
        """Mouth cues of a chunk about to play (viseme mode), on the audio's media time, then its
        voice to the outputs that carry it in messages of their own."""
        offset = start_tick / self.config.fps
        self.events.send({"type": "visemes", "utterance_id": uid, "start": round(offset, 3),
                          "cues": [cue.to_json(offset) for cue in cues]})
        for output in self.outputs.values():
            output.voice_ahead(uid, start_tick, audio)

    def _end_utterance(self, uid: str, interrupted: bool) -> None:
        self._utterances.pop(uid, None)
        callbacks = self._on_air_callbacks.pop(uid, None)
        if callbacks is not None and callbacks[1] is not None:
            callbacks[1]()
        self.events.send({"type": "speech_end", "utterance_id": uid, "interrupted": interrupted})
        if not self._utterances and self.state == "speaking":
            self.set_state("idle")

    def set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.events.state(state)

    # ---- client messages ---------------------------------------------------------------

    def handle_message(self, raw: str | bytes) -> None:
        """One JSON message from a client channel (data channel, WebSocket)."""
        try:
            message = parse_client_message(raw)
        except BadMessage as exc:
            self.report_error("client", f"bad message: {exc}")
            return
        try:
            if isinstance(message, InterruptMessage):
                self.interrupt()
                return
            text = validate_text(message.text, self.config.max_text_chars)
            if isinstance(message, SayMessage):
                self.say(text)
            elif self.conversation is not None:
                self.conversation.chat(text)
            else:
                self.report_error("client", "chat is not available: the server runs without a reply model "
                                            "(--listen false)")
        except ValueError as exc:
            self.report_error("client", str(exc))

    def report_error(self, stage: str, message: str) -> None:
        """Tell the client (an `error` event), the log and the metrics; the session goes on."""
        log.warning("session %s: %s error: %s", self.id, stage, message)
        if self.metrics is not None:
            self.metrics.error(stage)
        self.events.error(message)

    # ---- lifecycle ---------------------------------------------------------------------

    def spawn(self, coro, name: str) -> asyncio.Task:
        """Run `coro` as a task owned by this session (cancelled on close)."""
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: task %s failed: %r", self.id, task.get_name(), task.exception())

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    async def close(self, reason: str = "closed") -> None:
        """End the session and release everything it holds (idempotent)."""
        if self.closed:
            return
        self.closed = True
        log.info("session %s: closing (%s)", self.id, reason)
        current = asyncio.current_task()
        self.queue.clear()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # One after another in this task: an output may be closing the session from one of its own
        # tasks, which its stop must then leave alone (gather would run each stop in a new task).
        for output in list(self.outputs.values()):
            try:
                await output.stop()
            except Exception:
                log.exception("session %s: output %s did not stop cleanly", self.id, output.id)
        if self.metrics is not None:
            self.metrics.session_ended(self)
        if self._on_closed is not None:
            self._on_closed(self)

    def describe(self) -> dict:
        s = self.stream.stats
        outputs = [o.describe() for o in self.outputs.values()]
        # The browser peer that made the session (if any): its figures stay where clients read them.
        owner = next((o for o in outputs if o.get("owner")), None)
        return {
            "session_id": self.id,
            "mode": self.mode,
            "avatar": self.avatar,
            "state": self.state,
            "connection": owner["connection"] if owner is not None else None,
            "listen": self.listen and self.conversation is not None,
            "renderer": type(self.renderer).__name__,
            "age_s": round(time.time() - self.created, 1),
            "utterances_pending": list(self._utterances),
            "turns": [vars(t) for t in self.conversation.turns] if self.conversation is not None else [],
            "stats": {
                "ticks": s.ticks,
                "speech_frames": s.speech_frames,
                "idle_frames": s.idle_frames,
                "underruns": s.underruns,
                "repeated_frames": self.speaker.repeated_frames,
                "synthesis_cpu_s": round(self.speaker.synthesis_cpu_s, 3),
                "late_ticks": s.late_ticks,
                "skipped_ticks": s.skipped_ticks,
                "rested_ticks": s.rested_ticks,
                "queue_depth": len(self.queue),
                **(owner["stats"] if owner is not None else {}),
            },
            "outputs": outputs,
        }


class SpeechQueueFull(ValueError):
    """A session already has as many utterances waiting as it may hold."""


def validate_text(text: object, max_chars: int) -> str:
    """Clean text for speech; ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    for char in text:
        # NUL and other control characters, and halves of surrogate pairs that JSON's \\u escapes
        # can smuggle in: nothing a voice can say, and lone surrogates cannot even be encoded.
        if unicodedata.category(char) in ("Cc", "Cs") and char not in "\t\n\r":
            raise ValueError(f"text contains the character U+{ord(char):04X}, which cannot be spoken; "
                             "send plain text")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("text is empty")
    if len(cleaned) > max_chars:
        raise ValueError(f"text is {len(cleaned)} characters; the limit is {max_chars} (--max-text-chars)")
    return cleaned
