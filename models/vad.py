"""Streaming end-of-turn detection on 16 kHz mono with the Silero VAD shipped in faster-whisper.

One VoiceActivityDetector holds the ONNX session (shared and thread-safe); each audio
stream gets its own VadStream holding the recurrent state, so sessions never mix.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# The Silero model judges 512-sample (32 ms) frames, each preceded by the previous
# frame's last 64 samples as context; h and c are its LSTM state.
FRAME = 512
CONTEXT = 64
FRAME_S = FRAME / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech began at t (stream seconds); it was recognised at detected_at. Use for barge-in."""

    t: float
    detected_at: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """A finished turn: speech from start to t, detected at detected_at.

    audio is float32 16 kHz: the utterance with pre_roll_ms before start and a little of the
    trailing silence. forced is True when max_utterance_s cut the turn.
    """

    t: float
    audio: np.ndarray
    start: float
    detected_at: float
    forced: bool = False

    @property
    def duration(self) -> float:
        return self.t - self.start


@dataclass(frozen=True, slots=True)
class SpeechPause:
    """Speech stopped pause_ms ago: the turn may be over. Sent at most once per silence.

    Either SpeechEnd follows with no speech in between (the turn ended as audio says, so work
    begun on audio can be kept), or SpeechResume (the user goes on: that work is stale).
    audio is the utterance so far, exactly as SpeechEnd will carry it if the user does not go on
    (the pause comes no sooner than post_roll_ms into the silence).
    """

    t: float
    audio: np.ndarray
    start: float
    detected_at: float


@dataclass(frozen=True, slots=True)
class SpeechResume:
    """Speech came back after a SpeechPause: the turn goes on."""

    t: float
    detected_at: float


@dataclass(frozen=True, slots=True)
class SpeechDiscarded:
    """Speech that started (a SpeechStart was sent) stopped before min_speech_ms: not a turn."""

    t: float
    start: float
    detected_at: float


VadEvent = SpeechStart | SpeechPause | SpeechResume | SpeechEnd | SpeechDiscarded


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Tuning of one stream. Times are in stream time (samples pushed), not wall-clock time."""

    threshold: float = 0.5
    # Below this probability a frame is silence; between the two, speech goes on (hysteresis).
    neg_threshold: float | None = None
    # Consecutive speech before SpeechStart: long enough to skip clicks, short for barge-in.
    onset_ms: float = 64.0
    # The onset while VadStream.quick_onset is on (a listener whose avatar is talking, for a fast
    # barge-in). One frame: Silero gives lone speech frames to loud hiss (rms >= 0.25), never to
    # clicks or to the avatar's own voice heard back, which has longer runs at any level anyway.
    quick_onset_ms: float = 32.0
    # Speech shorter than this ends in SpeechDiscarded instead of SpeechEnd.
    min_speech_ms: float = 200.0
    end_silence_ms: float = 400.0
    # Silence after which SpeechPause is sent (a listener may start recognising before the end
    # of turn is certain); None or >= end_silence_ms: never. Only for turns past min_speech_ms.
    pause_ms: float | None = None
    pre_roll_ms: float = 200.0
    # Silence after the last speech frame kept at the end of the utterance audio, as heard.
    post_roll_ms: float = 96.0
    # Digital silence appended after the post-roll. Whisper writes out a last word only with ~150 ms
    # of quiet after it (cut 96 ms into the silence, "France" became "friends"), but that quiet need
    # not be waited for: 96 ms heard + 64 ms of zeros gave the transcript of 160 ms heard for 128 of
    # 128 questions in four voices (bench/bench_post_roll.py), so a pause is judged 64 ms sooner.
    post_roll_pad_ms: float = 64.0
    max_utterance_s: float = 20.0
    # After a SpeechEnd, the audio that follows is kept this long so that speech starting within it
    # can continue the ended utterance (VadStream.continue_last); 0: never.
    resume_ms: float = 0.0

    @property
    def silence_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


def default_vad_model_path() -> Path:
    """The Silero VAD ONNX file inside the installed faster-whisper package."""
    try:
        from faster_whisper.utils import get_assets_path
    except ImportError as exc:
        raise RuntimeError("faster-whisper is not installed: `pip install faster-whisper`") from exc
    found = sorted(Path(get_assets_path()).glob("silero_vad*.onnx"))
    if not found:
        raise RuntimeError(
            f"no silero_vad*.onnx in {get_assets_path()}; reinstall faster-whisper "
            "or pass the path of a Silero VAD ONNX model"
        )
    return found[-1]  # the newest version when several are shipped


class VoiceActivityDetector:
    """Loads the Silero VAD once; stream() makes an independent detector for each audio stream."""

    def __init__(self, config: VadConfig | None = None, model_path: str | Path | None = None) -> None:
        import onnxruntime

        path = Path(model_path) if model_path is not None else default_vad_model_path()
        options = onnxruntime.SessionOptions()
        # The model is tiny: one thread per call is fastest and leaves the cores to ASR/TTS.
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise RuntimeError(
                f"{path} is not a Silero VAD model with inputs input/h/c (found {sorted(names)}); "
                "use the silero_vad ONNX file shipped with faster-whisper"
            )
        self.model_path = path
        self.config = config or VadConfig()

    def stream(self, config: VadConfig | None = None, **overrides: float) -> VadStream:
        """A new stream; overrides replace single fields of the detector's config."""
        return VadStream(self, replace(config or self.config, **overrides))

    def probabilities(
        self, frames: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Speech probability of each (context + frame) row, and the LSTM state after them."""
        probs, h, c = self._session.run(None, {"input": frames, "h": h, "c": c})
        return np.asarray(probs).reshape(-1), h, c


class VadStream:
    """Turn detection for one audio stream: push() audio, get SpeechStart/SpeechEnd events."""

    def __init__(self, detector: VoiceActivityDetector, config: VadConfig) -> None:
        self._detector = detector
        self.config = config
        cfg = config
        self._onset_frames = max(1, math.ceil(cfg.onset_ms / 1000 / FRAME_S))
        self._quick_onset_frames = max(1, math.ceil(cfg.quick_onset_ms / 1000 / FRAME_S))
        self.quick_onset = False  # the listener turns it on while a quick onset matters more
        self._min_speech_frames = max(1, math.ceil(cfg.min_speech_ms / 1000 / FRAME_S))
        self._end_frames = max(1, math.ceil(cfg.end_silence_ms / 1000 / FRAME_S))
        self._pre_roll_frames = math.ceil(cfg.pre_roll_ms / 1000 / FRAME_S)
        self._post_roll_frames = min(self._end_frames, math.ceil(cfg.post_roll_ms / 1000 / FRAME_S))
        self._post_roll_pad = np.zeros(int(round(cfg.post_roll_pad_ms / 1000 * SAMPLE_RATE)), np.float32)
        pause = max(1, math.ceil(cfg.pause_ms / 1000 / FRAME_S)) if cfg.pause_ms is not None else 0
        # Never before the post-roll is complete: the pause then carries exactly the audio the end of
        # turn will, so work begun on it hears every word the whole turn has.
        pause = max(pause, self._post_roll_frames) if pause else 0
        self._pause_frames = pause if pause < self._end_frames else 0  # 0: no SpeechPause
        self._max_frames = max(1, int(cfg.max_utterance_s / FRAME_S))
        self._resume_frames = math.ceil(cfg.resume_ms / 1000 / FRAME_S)
        self._frames_seen = 0  # stream clock, in frames; survives reset()
        self.probability = 0.0
        self.reset()

    @property
    def time(self) -> float:
        """Stream time in seconds: the end of the last frame judged."""
        return self._frames_seen * FRAME_S

    @property
    def in_speech(self) -> bool:
        return self._speaking

    def reset(self) -> None:
        """Forget the model state, buffered audio and any turn in progress (the clock goes on)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        # Recent frames while idle, for the pre-roll and the onset run.
        self._recent: deque[np.ndarray] = deque(
            maxlen=self._pre_roll_frames + max(self._onset_frames, self._quick_onset_frames))
        self._speaking = False
        self._run = 0  # consecutive speech frames while idle
        self._utterance: list[np.ndarray] = []
        self._start_frame = 0  # first speech frame of the current turn
        self._last_speech_frame = 0  # last frame at or above threshold
        self._silent = 0  # silence frames since the last speech frame
        self._paused = False  # a SpeechPause was sent for the silence going on
        self._end_early = 0  # end_after(): silence frames that end this silence's turn (0: end_silence_ms)
        # The last ended utterance and every frame since, while speech may still continue it.
        self._ended: list[np.ndarray] | None = None
        self._ended_start = 0
        self._since_end: list[np.ndarray] = []
        # At a SpeechStart within resume_ms: that utterance and the silence up to the new one.
        self._continuable: tuple[int, list[np.ndarray]] | None = None

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed 16 kHz mono audio (float32 in [-1, 1] or int16) of any length."""
        audio = _as_float32(samples)
        if self._pending.size:
            audio = np.concatenate((self._pending, audio))
        n = audio.size // FRAME
        self._pending = audio[n * FRAME:].copy()
        if n == 0:
            return []
        frames = audio[: n * FRAME].reshape(n, FRAME)
        contexts = np.empty((n, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -CONTEXT:]
        self._context = frames[-1, -CONTEXT:].copy()
        probs, self._h, self._c = self._detector.probabilities(
            np.concatenate((contexts, frames), axis=1), self._h, self._c
        )
        events: list[VadEvent] = []
        for frame, prob in zip(frames, probs):
            self._step(frame, float(prob), events)
        return events

    def _step(self, frame: np.ndarray, prob: float, events: list[VadEvent]) -> None:
        index = self._frames_seen
        self._frames_seen += 1
        self.probability = prob
        cfg = self.config
        if not self._speaking:
            self._recent.append(frame)
            if self._ended is not None:
                self._since_end.append(frame)
                if len(self._since_end) > self._resume_frames:
                    self._ended, self._since_end = None, []
            self._run = self._run + 1 if prob >= cfg.threshold else 0
            if self._run >= (self._quick_onset_frames if self.quick_onset else self._onset_frames):
                self._begin(index - self._run + 1, events)
            return

        self._utterance.append(frame)
        if prob >= cfg.threshold:
            self._last_speech_frame = index
            self._silent = 0
            self._end_early = 0
            if self._paused:
                self._paused = False
                events.append(SpeechResume(t=index * FRAME_S, detected_at=self.time))
        elif prob < cfg.silence_threshold or self._silent:
            # Between the thresholds speech goes on, unless a pause has already begun.
            self._silent += 1

        if self._silent >= (self._end_early or self._end_frames):
            self._finish(events, forced=False)
        elif index + 1 - self._start_frame >= self._max_frames:
            self._finish(events, forced=True)
        elif (self._pause_frames and self._silent == self._pause_frames and not self._paused
              and self._last_speech_frame + 1 - self._start_frame >= self._min_speech_frames):
            self._paused = True
            events.append(SpeechPause(t=(self._last_speech_frame + 1) * FRAME_S, audio=self._utterance_audio(),
                                      start=self._start_frame * FRAME_S, detected_at=self.time))

    def end_after(self, silence_ms: float) -> list[VadEvent]:
        """End the turn in progress once the silence going on reaches silence_ms, sooner than
        end_silence_ms (an end-of-turn model judged it finished). Already past it: the SpeechEnd
        (or SpeechDiscarded) is returned now. Speech coming back cancels it."""
        if not self._speaking or self._silent == 0:
            return []
        frames = math.ceil(silence_ms / 1000 / FRAME_S)
        if frames <= self._silent:
            events: list[VadEvent] = []
            self._finish(events, forced=False)
            return events
        self._end_early = min(frames, self._end_frames)
        return []

    def continue_last(self) -> bool:
        """Make the utterance that has just started (SpeechStart) the continuation of the one that ended
        before it: its SpeechPause and SpeechEnd then carry both, with the silence between as heard, and
        start where the first began. False (nothing changes) when no utterance ended within resume_ms
        before this one, or it was already continued."""
        if not self._speaking or self._continuable is None:
            return False
        start_frame, before = self._continuable
        self._continuable = None
        self._utterance = before + self._utterance
        self._start_frame = start_frame
        return True

    def _begin(self, first_frame: int, events: list[VadEvent]) -> None:
        self._speaking = True
        self._start_frame = first_frame
        self._last_speech_frame = self._frames_seen - 1
        self._silent = 0
        # The onset run plus up to pre_roll of what came before it.
        self._utterance = list(self._recent)[-(self._run + self._pre_roll_frames):]
        self._recent.clear()
        self._continuable = None
        if self._ended is not None:
            gap = self._since_end[:len(self._since_end) - len(self._utterance)]
            self._continuable = (self._ended_start, self._ended + gap)
            self._ended, self._since_end = None, []
        self._run = 0
        events.append(SpeechStart(t=first_frame * FRAME_S, detected_at=self.time))

    def _finish(self, events: list[VadEvent], forced: bool) -> None:
        start = self._start_frame * FRAME_S
        end = (self._last_speech_frame + 1) * FRAME_S
        speech_frames = self._last_speech_frame + 1 - self._start_frame
        if forced or speech_frames >= self._min_speech_frames:
            events.append(SpeechEnd(t=end, audio=self._utterance_audio(), start=start, detected_at=self.time,
                                    forced=forced))
            if self._resume_frames and not forced:
                # Kept whole (trailing silence too): a continuation hears the gap exactly as it was.
                self._ended, self._ended_start, self._since_end = self._utterance, self._start_frame, []
        else:
            events.append(SpeechDiscarded(t=end, start=start, detected_at=self.time))
        self._speaking = False
        self._utterance = []
        self._continuable = None
        self._silent = 0
        self._run = 0
        self._paused = False
        self._end_early = 0

    def _utterance_audio(self) -> np.ndarray:
        # Drop the trailing silence beyond post_roll: it only costs ASR time.
        keep = len(self._utterance) - max(0, self._silent - self._post_roll_frames)
        return np.concatenate(self._utterance[:keep] + [self._post_roll_pad]) if keep > 0 else np.zeros(0, np.float32)


def _as_float32(samples: np.ndarray) -> np.ndarray:
    audio = np.asarray(samples).reshape(-1)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if audio.dtype != np.float32:
        return audio.astype(np.float32)
    return audio
