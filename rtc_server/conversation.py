"""The conversation loop of one session: mic -> VAD -> ASR -> LLM -> speech, with barge-in."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import av
import numpy as np

from models.bundle import ModelBundle
from models.llm import ChatHistory, ClauseSplitter, LLMError
from models.llm.conversation import load_persona
from models.turn import TurnJudgement, Verdict, judge, judge_words
from rtc_server.arrival_clock import ArrivalClock
from rtc_server.session import Session
from rtc_server.pending_turn import PendingTurn
from rtc_server.speculation import Prefetch, Speculation

log = logging.getLogger(__name__)

ASR_RATE = 16_000
# With --turn-detector smart and no speculation, the pause at which the verdict is taken: the VAD's
# post-roll, so the words judged are all the turn's.
SMART_PAUSE_MS = 96.0


@dataclass
class TurnTiming:
    """Monotonic timestamps of one user turn, for stats, metrics and the latency bench."""

    source: str                      # "voice" or "text"
    user_text: str = ""
    speech_end: float | None = None  # end of the user's speech (stream time mapped to monotonic)
    end_of_turn: float | None = None  # VAD decided the turn is over
    # When recognition of the turn began during the end-of-turn silence (None: after it). The
    # stages still count from end_of_turn: asr and llm are then what was left to wait for.
    speculated_at: float | None = None
    speculative_asr_done: float | None = None  # when that early recognition finished
    speculative_first_token: float | None = None  # when its reply's first token came
    speculations_dropped: int = 0  # begun in earlier pauses of the turn, dropped when the user went on
    # Earlier ends of this turn taken back: the user went on before the answer to them was heard.
    ends_withdrawn: int = 0
    # The end-of-turn verdict at the pause that ended the turn (--turn-detector smart), and what ended it:
    # "verdict" (judged complete), "held" (judged unsure: ended at once, its answer not heard before
    # --turn-unsure-wait-ms of silence), "silence" (--end-silence-ms or, judged unfinished,
    # --turn-max-wait-ms), "max_utterance" (too long).
    turn_verdict: str | None = None
    turn_reason: str | None = None
    turn_probability: float | None = None
    ended_by: str | None = None
    # The silence heard when the turn ended, in stream time (unlike the stages, not moved by how
    # late the audio arrived or how busy the machine was).
    silence_heard_ms: float | None = None
    asr_done: float | None = None
    llm_first_token: float | None = None
    first_clause: float | None = None
    tts_first_audio: float | None = None
    answer_allowed: float | None = None  # a held turn: when the silence it was held for had passed
    first_frame: float | None = None  # first frame of the reply left on the clock
    utterance_id: str | None = None
    stages_ms: dict = field(default_factory=dict)

    def finish(self) -> None:
        def span(a, b):
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        start = self.end_of_turn if self.source == "voice" else self.asr_done
        self.stages_ms = {
            "end_of_turn_wait": span(self.speech_end, self.end_of_turn),
            "asr": span(self.end_of_turn, self.asr_done),
            "llm_first_token": span(self.asr_done, self.llm_first_token),
            "llm_first_clause": span(self.asr_done, self.first_clause),
            "tts_first_audio": span(self.first_clause, self.tts_first_audio),
            # A held turn's answer, ready, waiting for the silence (0: it was ready later).
            "answer_hold": (max(0.0, span(self.tts_first_audio, self.answer_allowed))
                            if self.answer_allowed is not None and self.tts_first_audio is not None else None),
            "first_frame": span(max(self.tts_first_audio, self.answer_allowed or 0.0)
                                if self.tts_first_audio is not None else None, self.first_frame),
            "server_total": span(self.speech_end if self.source == "voice" else start, self.first_frame),
        }
        if self.speculated_at is not None:
            # How early the work began, and how long its recognition took (counted in no stage above).
            self.stages_ms["speculation_lead"] = span(self.speculated_at, self.end_of_turn)
            self.stages_ms["speculative_asr"] = span(self.speculated_at, self.speculative_asr_done)
            self.stages_ms["speculative_first_token"] = span(self.speculated_at, self.speculative_first_token)


class Conversation:
    """Listens to one session's microphone and answers it out loud."""

    def __init__(self, session: Session, bundle: ModelBundle) -> None:
        config = session.config
        self.language = session.language or config.speech_language
        self.session = session
        self.asr = bundle.asr
        self.llm = bundle.llm
        self.executor = session.speaker.tts_executor  # ASR shares the TTS workers, never the renderer's
        # Per session (the offer's barge_in): "on" interrupts on the first frame of the user's
        # voice, "clear" only on a clear onset (open speakers: its own voice coming back must
        # not stop it), "off" never (half duplex).
        mode = session.barge_in or ("on" if config.barge_in else "off")
        self.barge_in = mode != "off"
        self.quick_barge_in = mode == "on"
        self.lead_words = config.lead_words
        # Recognition (and the reply) start in the background after this much silence, before
        # the end of turn confirms it; kept when it does, dropped if the user goes on. The
        # VAD sends no pause for 0 or for a pause as long as the end of turn.
        self.prefetch_reply = config.speculate_after_ms > 0
        # --turn-detector smart: at that pause the words and the voice are judged (models/turn.py); a
        # finished turn ends then, an unfinished one waits up to turn_max_wait_ms of silence, and
        # when they disagree the turn ends then too but its answer is held until turn_unsure_wait_ms.
        self.smart = config.turn_detector == "smart"
        self.turn_model = bundle.turn if self.smart else None
        self.unsure_wait_ms = config.turn_unsure_wait_ms
        self.turn_threshold = config.turn_threshold
        pause_ms = config.speculate_after_ms or (SMART_PAUSE_MS if self.smart else None)
        # A user who goes on within --turn-resume-ms, before the answer is heard, continues the turn.
        self.vad = bundle.vad.stream(end_silence_ms=config.turn_max_wait_ms if self.smart else config.end_silence_ms,
                                     pause_ms=pause_ms, quick_onset_ms=config.barge_in_onset_ms,
                                     resume_ms=config.turn_resume_ms)
        self._pauses = 0  # pauses seen: a verdict counts only for the pause it judged
        self._judgement: TurnJudgement | None = None  # the verdict on the pause going on
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=ASR_RATE)
        # A session's own persona (the offer's text) replaces the server's; never a file path from a client.
        persona = session.persona if session.persona else load_persona(config.persona)
        self.history = ChatHistory(persona, max_turns=config.history_turns)
        self.turns: deque[TurnTiming] = deque(maxlen=20)
        self._turn: asyncio.Task | None = None
        self._speculation: Speculation | None = None  # work on the turn in its end-of-turn pause
        self._dropped = 0  # speculations dropped since the user's speech began
        self._pending: PendingTurn | None = None  # the last spoken turn, until its answer is heard
        # A held turn: its speech's end (stream seconds) and its timing, until the silence lets it answer.
        self._held: tuple[float, TurnTiming] | None = None
        self._withdrawn = 0  # ends of the turn going on taken back (the user went on)
        self.arrivals = ArrivalClock(ASR_RATE)  # VAD stream time -> when that audio arrived
        self.user_speaking = False
        self.mic_errors = 0

    # ---- input -------------------------------------------------------------------------

    def hear(self, frame: av.AudioFrame) -> None:
        try:
            for out in self.resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1)
                self.arrivals.heard(len(pcm))
                # Talking over the avatar should stop it fast: a one-frame onset then. Not while the
                # answer is still unheard: going on then withdraws the turn, which a click must not do.
                self.vad.quick_onset = self.quick_barge_in and self._avatar_busy() and not self._may_withdraw()
                for event in self.vad.push(pcm):
                    self._on_vad(event)
                self._check_hold()
        except Exception as exc:  # garbage audio must not end the session
            self.mic_errors += 1
            if self.mic_errors in (1, 100):
                self.session.report_error("mic", f"microphone audio could not be processed: {exc}")

    def _avatar_busy(self) -> bool:
        return self.session.speaking or (self._turn is not None and not self._turn.done())

    def _check_hold(self) -> None:
        """Let a held turn answer once the VAD has heard --turn-unsure-wait-ms of silence after its speech
        (and is not hearing the onset of more)."""
        if self._held is None or self._pending is None:
            return
        speech_end, timing = self._held
        if ((self.vad.time - speech_end) * 1000 >= self.unsure_wait_ms and not self.vad.in_speech
                and self.vad.probability < self.vad.config.threshold):
            self._allow_answer(self._pending, timing)

    def _allow_answer(self, pending: PendingTurn, timing: TurnTiming) -> None:
        if self._pending is pending:
            self._held = None
        if pending.answer_held and not pending.withdrawn:
            timing.answer_allowed = time.monotonic()
            pending.allow_answer()

    async def _answer_anyway(self, pending: PendingTurn, timing: TurnTiming) -> None:
        """Should the microphone stop sending, the wall clock lets a held turn answer."""
        await asyncio.sleep(self.unsure_wait_ms / 1000 + 0.5)
        self._allow_answer(pending, timing)

    def _may_withdraw(self) -> bool:
        """The last spoken turn's answer is unheard and nothing else is on air: going on continues it."""
        return self._pending is not None and not self._pending.heard and self.session.state != "speaking"

    def _on_vad(self, event) -> None:
        kind = type(event).__name__
        if kind == "SpeechStart":
            if self._may_withdraw() and self.vad.continue_last():
                self._withdraw()
            else:
                if self._avatar_busy():
                    if not self.barge_in:
                        return  # half duplex: the avatar's own voice must not become a turn
                    log.info("session %s: barge-in", self.session.id)
                    self.session.interrupt()
                self._dropped = 0
                self._withdrawn = 0
            self.user_speaking = True
            self.session.set_state("listening")
        elif kind == "SpeechPause":
            self._next_silence()
            if self.user_speaking:
                audio = np.asarray(event.audio, dtype=np.float32)
                self._speculate(audio)
                if self.smart:
                    self.session.spawn(self._judge(self._pauses, audio), "end-of-turn")
        elif kind == "SpeechResume":
            self._next_silence()
            self._drop_speculation()
        elif kind == "SpeechDiscarded":
            self._next_silence()
            self._drop_speculation()
            if self.user_speaking:
                self.user_speaking = False
                self.session.set_state("idle")
        elif kind == "SpeechEnd":
            judgement = self._judgement
            self._next_silence()
            # No speech since the pause (else SpeechResume came): the speculation heard it all.
            speculation, self._speculation = self._speculation, None
            if not self.user_speaking:
                if speculation is not None:
                    speculation.cancel()
                return
            self.user_speaking = False
            timing = TurnTiming(source="voice", speech_end=self.arrivals.at(event.t), end_of_turn=time.monotonic(),
                                speculated_at=speculation.started if speculation is not None else None,
                                speculations_dropped=self._dropped, ends_withdrawn=self._withdrawn,
                                silence_heard_ms=round((event.detected_at - event.t) * 1000, 1))
            if judgement is not None:
                timing.turn_verdict = judgement.verdict.value
                timing.turn_reason = judgement.reason
                timing.turn_probability = judgement.probability
            held = judgement is not None and judgement.verdict is Verdict.UNSURE and not event.forced
            timing.ended_by = ("max_utterance" if event.forced else
                               "verdict" if judgement is not None and judgement.verdict is Verdict.COMPLETE
                               else "held" if held else "silence")
            self._pending = PendingTurn(self.session.events, held=held)
            self._held = None
            if held:
                self._held = (event.t, timing)
                self.session.spawn(self._answer_anyway(self._pending, timing), "answer-hold")
                self._check_hold()
            self._start_turn(self._voice_turn(np.asarray(event.audio, dtype=np.float32), timing, speculation,
                                              self._pending))

    def _withdraw(self) -> None:
        """The user went on before the answer was heard: take the turn back (nothing of it was shown);
        the VAD carries its audio into the turn going on."""
        pending, self._pending = self._pending, None
        self._held = None
        if pending is None or not pending.withdraw():
            return
        self._withdrawn += 1
        log.info("session %s: the user went on before the answer was heard: one turn continues", self.session.id)
        self.session.interrupt()

    def _next_silence(self) -> None:
        """The pause being judged is over (speech came back, or the turn ended): its verdict goes stale."""
        self._pauses += 1
        self._judgement = None

    async def _judge(self, pause: int, audio: np.ndarray) -> None:
        """The end-of-turn verdict on the pause numbered `pause`; ends the turn if it is over.

        The words are the speculation's recognition. Smart Turn runs beside it, on the other worker, so
        that the verdict comes when the slower of the two is done rather than after both (Smart Turn
        takes a little less than tiny.en's recognition: bench/bench_asr.py); its answer is used only when the words
        leave the verdict open (judge_words gives None).
        """
        speculation = self._speculation
        if speculation is None:
            return
        voice = (asyncio.get_running_loop().run_in_executor(self.executor, self.turn_model.probability, audio)
                 if self.turn_model is not None else None)
        try:
            text = await speculation.transcript()
            probability = None
            if voice is not None and pause == self._pauses and judge_words(text, self.language) is None:
                probability = await voice
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # the speculation was dropped: the user went on
        except Exception as exc:  # no verdict: the silence rule ends the turn, as without a model
            log.warning("session %s: end-of-turn verdict failed: %s", self.session.id, exc)
            return
        finally:
            if voice is not None:
                voice.cancel()  # not needed (or not started): its answer goes unread
                if voice.done() and not voice.cancelled():
                    voice.exception()  # read, so that a failure unread is not reported as never retrieved
        if pause != self._pauses or not self.user_speaking:
            return  # the user went on, or the turn already ended: this verdict is about nothing now
        judgement = judge(text, probability, self.turn_threshold, self.language)
        self._judgement = judgement
        if judgement.verdict is Verdict.COMPLETE:
            events = self.vad.end_after(0)
        elif judgement.verdict is Verdict.UNSURE:
            # Ended now so that the answer is made meanwhile; it is held until unsure_wait_ms of silence
            # (the user going on before then withdraws it).
            events = self.vad.end_after(0)
        else:
            events = []  # unfinished: wait for more, up to --turn-max-wait-ms
        for event in events:
            self._on_vad(event)

    def chat(self, text: str) -> dict:
        """A typed user turn: interrupts whatever the avatar is doing and answers it."""
        self.session.interrupt()
        # The same events as a spoken turn: the user's words, then the reply.
        self.session.events.send({"type": "transcript", "text": text, "final": True, "source": "text"})
        timing = TurnTiming(source="text", user_text=text, asr_done=time.monotonic())
        # Typed words cannot go on: nothing of the turn is held back.
        turn = PendingTurn(self.session.events)
        turn.release()
        self._start_turn(self._reply(text, timing, turn))
        return {"accepted": True}

    # ---- turns -------------------------------------------------------------------------

    def _start_turn(self, coro) -> None:
        self.cancel_turn()
        self._turn = self.session.spawn(coro, "turn")

    def cancel_turn(self) -> None:
        """Stop the turn being answered, and any work begun on one not yet over."""
        self._drop_speculation()
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()
        self._turn = None

    # ---- speculation -------------------------------------------------------------------

    def _speculate(self, audio: np.ndarray) -> None:
        """The user paused: recognise what they said and start the reply, showing nothing yet."""
        self._drop_speculation()
        self._speculation = Speculation(
            audio,
            recognise=self._transcribe,
            messages_for=lambda text: self.history.messages(pending_user=text),
            reply_stream=self.llm.stream if self.prefetch_reply else None,
            spawn=self.session.spawn,
        )

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None
            self._dropped += 1

    async def _transcribe(self, audio: np.ndarray, on_partial: Callable[[str], None] | None = None) -> str:
        """The text of `audio`, recognised in a worker; on_partial gets the growing text."""
        loop = asyncio.get_running_loop()

        def recognise() -> str:
            text = ""
            for text in self.asr.transcribe_iter(audio, self.language):
                if on_partial is not None:
                    loop.call_soon_threadsafe(on_partial, text)
            return text

        return (await loop.run_in_executor(self.executor, recognise)).strip()

    # ---- turns -------------------------------------------------------------------------

    async def _voice_turn(self, audio: np.ndarray, timing: TurnTiming, speculation: Speculation | None,
                          turn: PendingTurn) -> None:
        session = self.session
        session.set_state("thinking")

        def partial(text: str) -> None:
            session.events.send({"type": "transcript", "text": text, "final": False, "source": "voice"})

        try:
            try:
                if speculation is not None:
                    text = await speculation.transcript()
                    timing.speculative_asr_done = speculation.asr_done
                else:
                    text = await self._transcribe(audio, partial)
            except Exception as exc:
                turn.release()
                session.report_error("asr", f"speech recognition failed: {exc}")
                session.set_state("idle")
                return
            timing.asr_done = time.monotonic()
            if not text:  # noise, a cough: no words, no turn
                turn.release()
                session.set_state("idle")
                return
            # The words show at once; they are final (a turn of the chat log) once the answer is heard.
            session.events.send({"type": "transcript", "text": text, "final": False, "source": "voice"})
            turn.send({"type": "transcript", "text": text, "final": True, "source": "voice"})
            timing.user_text = text
            ahead = speculation.reply(self.history.messages(pending_user=text)) if speculation is not None else None
            await self._reply(text, timing, turn, ahead)
        except asyncio.CancelledError:
            # Stopped by something else than the user going on (a withdrawn turn ignores this): what was
            # said and answered so far stays, and the turn cannot be continued.
            turn.release()
            raise
        finally:
            if speculation is not None:
                speculation.cancel()  # whatever of it was not used

    async def _reply(self, text: str, timing: TurnTiming, turn: PendingTurn,
                     deltas: AsyncIterator[str] | None = None) -> None:
        """Answer `text` out loud; `deltas` is the reply when it is already being written. What the turn
        shows and keeps (events, the history) goes through `turn`, which holds it until the answer is heard."""
        session = self.session
        session.set_state("thinking")
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        # SmolLM-sized models ramble: three spoken sentences are an answer, the rest is cut.
        # The opening phrase of a long first sentence goes to TTS as soon as it is written (the
        # speaker would synthesize it alone anyway, --lead-words): speech starts before the model
        # has finished the sentence.
        splitter = ClauseSplitter(min_first_words=3, max_sentences=3, lead_words=self.lead_words)
        reply = ""
        uid: str | None = None

        async def clause_stream() -> AsyncIterator[str]:
            while (clause := await clauses.get()) is not None:
                yield clause

        def queue_clause(clause: str) -> None:
            nonlocal uid
            if timing.first_clause is None:
                timing.first_clause = time.monotonic()
            clauses.put_nowait(clause)
            if uid is None:
                uid = session.speak(clause_stream(), on_first_audio=lambda: _mark(timing, "tts_first_audio"),
                                    ready=turn.may_answer)
                timing.utterance_id = uid
                session.watch_utterance(uid, lambda: self._on_air(timing, turn), on_unheard=turn.release)

        try:
            if deltas is None:
                deltas = self.llm.stream(self.history.messages(pending_user=text))
            async with aclosing(deltas):
                async for delta in deltas:
                    if timing.llm_first_token is None:
                        timing.llm_first_token = time.monotonic()
                        if isinstance(deltas, Prefetch):
                            timing.speculative_first_token = deltas.first_item_at
                    reply += delta
                    turn.send({"type": "reply", "text": reply, "final": False})
                    for clause in splitter.feed(delta):
                        queue_clause(clause)
                    if splitter.done:
                        break  # closing the stream stops the generation
            rest = splitter.flush()
            if rest:
                queue_clause(rest)
        except LLMError as exc:
            session.report_error("llm", f"reply failed: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session %s: reply failed", session.id)
            session.report_error("llm", f"reply failed: {exc}")
        finally:
            clauses.put_nowait(None)
            turn.send({"type": "reply", "text": reply, "final": True})
            turn.on_heard(lambda: self._remember(text, reply, timing))
        if uid is None:
            turn.release()
            session.set_state("idle")
        log.info("session %s: turn %r -> %r", session.id, text[:60], reply[:60])

    def _remember(self, text: str, reply: str, timing: TurnTiming) -> None:
        """A turn the user heard answered (or interrupted): into the history and the stats."""
        self.turns.append(timing)
        trims = self.history.trims
        self.history.add_user(text)
        if reply:
            self.history.add_assistant(reply)
        if self.history.trims != trims:
            # The prompt's start changed: read it now, while the reply plays, rather than
            # when the user's next question is waiting (~1.5 s for SmolLM2 on 2 cores).
            self.session.spawn(self.llm.prefill(self.history.messages()), "llm-prefill")

    def _on_air(self, timing: TurnTiming, turn: PendingTurn) -> None:
        turn.release()
        _mark(timing, "first_frame")
        timing.finish()
        if self.session.metrics is not None:
            self.session.metrics.observe_turn(timing.stages_ms)
        log.info("session %s: turn latency %s", self.session.id,
                 " ".join(f"{k}={v:.0f}ms" for k, v in timing.stages_ms.items() if v is not None))


def _mark(timing: TurnTiming, name: str) -> None:
    if getattr(timing, name) is None:
        setattr(timing, name, time.monotonic())


def conversation_factory(bundle: ModelBundle) -> Callable[[Session], Conversation] | None:
    """What builds each new session's conversation, or None when `bundle` cannot converse
    (no VAD, ASR or LLM loaded: a say-only server)."""
    if bundle.vad is None or bundle.asr is None or bundle.llm is None:
        return None
    return lambda session: Conversation(session, bundle)
