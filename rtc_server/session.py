"""One browser connection: its peer, clock, frame queue, speaker and the tasks they run."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import unicodedata
from concurrent.futures import Executor
from typing import TYPE_CHECKING, AsyncIterable, Awaitable, Callable

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from models.lipsync.renderer import LipSyncRenderer
from models.speech import SpeechChunk
from rtc_server.config import Config
from rtc_server.mic_receiver import shorten_mic_jitter_buffer
from rtc_server.peer_watch import wait_for_silence
from rtc_server.events import BadMessage, EventChannel, InterruptMessage, SayMessage, State, parse_client_message
from rtc_server.speaker import Speaker, SpeechFailed, Voice, one_text
from tracks.avframe import AVFrame
from tracks.clock import MediaClock
from tracks.frame_queue import FrameQueue
from tracks.rtc import RtcSink
from tracks.sender_reports import report_due_times
from tracks.stream import AVStream
from tracks.sync_test import SyncTestPattern

if TYPE_CHECKING:
    from rtc_server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class OfferError(ValueError):
    """The browser's offer cannot be answered (malformed SDP, missing media)."""


class AvatarIdle:
    """Idle source for normal sessions: the renderer's idle face and silence."""

    def __init__(self, renderer: LipSyncRenderer, samples_per_tick: int) -> None:
        self.renderer = renderer
        self.silence = np.zeros(samples_per_tick, dtype=np.int16)

    def idle(self, tick: int) -> AVFrame:
        return AVFrame(video=self.renderer.idle_frame(tick), audio=self.silence)


class Session:
    """Owns everything of one connection and cancels all of it on close."""

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
        on_closed: Callable[["Session"], None] | None = None,
        metrics: "ServerMetrics | None" = None,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.config = config
        self.mode = mode
        self.avatar = avatar
        self.created = time.time()
        self.connected_at: float | None = None
        self.closed = False
        self._on_closed = on_closed
        self.metrics = metrics
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.clock = MediaClock(config.fps)
        self.queue = FrameQueue(config.queue_frames)
        if mode == "sync-test":
            idle = SyncTestPattern(renderer.width, renderer.height, config.fps, config.sample_rate)
        else:
            idle = AvatarIdle(renderer, config.samples_per_tick)
        self.stream = AVStream(self.clock, self.queue, idle, on_speech=self._on_speech)
        self.sink = RtcSink(self.clock, config.sample_rate)
        self.stream.attach(self.sink)
        self.events = EventChannel()
        self.speaker = Speaker(voice, renderer, self.queue, executor, config.samples_per_tick,
                               next_tick=lambda: self.stream.tick, tts_executor=work_executor,
                               lead_words=config.lead_words)
        self.state: State = "idle"
        self._tasks: set[asyncio.Task] = set()
        self._utterances: dict[str, asyncio.Task] = {}  # accepted and not yet ended, in order
        self._speak_lock = asyncio.Lock()
        self._utterance_count = 0
        self._on_air_callbacks: dict[str, Callable[[], None]] = {}
        self.on_chat: Callable[[str], dict] | None = None  # set by the conversation, if any
        self.conversation = None  # rtc_server.conversation.Conversation when listening
        self.mic_handler: Callable[[object], None] | None = None

    # ---- negotiation -------------------------------------------------------------------

    async def accept_offer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """Answer the browser's offer; raises OfferError for anything unusable."""
        pc = self.pc
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:  # aiortc raises ValueError/KeyError/... for bad SDP
            raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
        kinds = {t.kind for t in pc.getTransceivers()}
        if not {"audio", "video"} <= kinds:
            raise OfferError("the SDP offer must carry one audio and one video transceiver "
                             f"(got {sorted(kinds) or 'none'}); see the client in static/client.html")
        for track in (self.sink.audio, self.sink.video):
            sender = pc.addTrack(track)
            if self.config.due_time_reports:
                report_due_times(sender, track)
        if not self.config.listen:
            # A say-only server never hears the microphone: answering "sendonly" keeps the browser
            # from sending it, and this process from decoding 50 Opus packets a second for nothing.
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.direction = "sendonly"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self.spawn(self.stream.run(), "clock")
        self.spawn(self._connect_watchdog(), "watchdog")
        log.info("session %s: offer accepted (mode=%s, avatar=%s)", self.id, self.mode, self.avatar)
        return pc.localDescription

    def _on_datachannel(self, channel) -> None:
        if channel.label != "events":
            return
        self.events.attach(channel)
        channel.on("message", self._on_message)
        self.events.state(self.state)

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            shorten_mic_jitter_buffer(self.pc, track)
            self.spawn(self._consume_mic(track), "mic")
        else:
            self.spawn(self._drain(track), "video-in")

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.time()
            self.spawn(self._watch_peer(), "peer-watch")
        elif state in ("failed", "closed"):
            await self.close(f"peer {state}")

    async def _watch_peer(self) -> None:
        silence = await wait_for_silence(self.pc, self.config.peer_timeout_s)
        await self.close(f"peer silent for {silence:.1f} s (tab closed or network lost)")

    async def _connect_watchdog(self) -> None:
        await asyncio.sleep(self.config.connect_timeout_s)
        if self.connected_at is None:
            await self.close(f"peer did not connect within {self.config.connect_timeout_s:.0f} s")

    async def _consume_mic(self, track) -> None:
        # Every received track must be read, or aiortc piles frames up.
        try:
            while True:
                frame = await track.recv()
                if self.mic_handler is not None:
                    self.mic_handler(frame)
        except MediaStreamError:
            pass

    async def _drain(self, track) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    # ---- speech ------------------------------------------------------------------------

    def new_utterance_id(self) -> str:
        self._utterance_count += 1
        return f"{self.id}-{self._utterance_count}"

    def say(self, text: str) -> str:
        """Speak `text` verbatim after whatever is already queued; returns the utterance id."""
        return self.speak(one_text(text))

    def speak(self, texts: AsyncIterable[str], utterance_id: str | None = None,
              on_first_audio: Callable[[], None] | None = None) -> str:
        """Speak a stream of texts (e.g. LLM clauses) as one utterance."""
        uid = utterance_id or self.new_utterance_id()
        return self._queue_utterance(uid, lambda: self.speaker.speak(uid, texts, on_first_audio))

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

    def watch_utterance(self, uid: str, on_air: Callable[[], None]) -> None:
        """Call `on_air` when the first frame of `uid` leaves on the clock."""
        self._on_air_callbacks[uid] = on_air

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
            callback = self._on_air_callbacks.pop(uid, None)
            if callback is not None:
                callback()
            self.events.send({"type": "speech_start", "utterance_id": uid})
            self.set_state("speaking")
        elif uid in self._utterances:
            self._end_utterance(uid, interrupted=False)

    def _end_utterance(self, uid: str, interrupted: bool) -> None:
        self._utterances.pop(uid, None)
        self._on_air_callbacks.pop(uid, None)
        self.events.send({"type": "speech_end", "utterance_id": uid, "interrupted": interrupted})
        if not self._utterances and self.state == "speaking":
            self.set_state("idle")

    def set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.events.state(state)

    # ---- client messages ---------------------------------------------------------------

    def _on_message(self, raw) -> None:
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
            elif self.on_chat is not None:
                self.on_chat(text)
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
        self.sink.stop()
        await self.pc.close()
        if self.metrics is not None:
            self.metrics.session_ended(self)
        if self._on_closed is not None:
            self._on_closed(self)

    def describe(self) -> dict:
        s = self.stream.stats
        return {
            "session_id": self.id,
            "mode": self.mode,
            "avatar": self.avatar,
            "state": self.state,
            "connection": self.pc.connectionState,
            "age_s": round(time.time() - self.created, 1),
            "utterances_pending": list(self._utterances),
            "turns": [vars(t) for t in self.conversation.turns] if self.conversation is not None else [],
            "stats": {
                "ticks": s.ticks,
                "speech_frames": s.speech_frames,
                "idle_frames": s.idle_frames,
                "underruns": s.underruns,
                "repeated_frames": self.speaker.repeated_frames,
                "late_ticks": s.late_ticks,
                "skipped_ticks": s.skipped_ticks,
                "queue_depth": len(self.queue),
                "video_sent": self.sink.video.sent,
                "audio_sent": self.sink.audio.sent,
                "video_dropped": self.sink.video.dropped,
                "audio_dropped": self.sink.audio.dropped,
            },
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
