"""Loading every model a server needs, once, with progress and timings."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from models.lipsync.renderer import LipSyncRenderer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class ModelBundle:
    """What sessions share: the voice, the renderers per avatar, and the listening models.

    Avatars beyond the default are added on first use by rtc_server.avatars.AvatarLibrary.
    """

    tts: Any
    renderers: dict[str, LipSyncRenderer]
    default_avatar: str
    vad: Any = None
    asr: Any = None
    llm: Any = None
    turn: Any = None  # the end-of-turn model (--turn-detector smart)
    timings: dict[str, float] = field(default_factory=dict)


class ModelLoadError(RuntimeError):
    """A model failed to load or failed its start-up check; the message names it and the fix."""


def _timed(name: str, timings: dict[str, float], progress: Progress, load: Callable[[], Any]) -> Any:
    """Load one model (each loader ends with a real call to it), naming the model if it fails."""
    progress(f"loading {name} ...")
    start = time.perf_counter()
    try:
        value = load()
    except Exception as exc:
        raise ModelLoadError(f"{name} failed to load: {exc}") from exc
    timings[name] = time.perf_counter() - start
    progress(f"loaded {name} in {timings[name]:.1f} s")
    return value


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(config, progress: Progress = log.info) -> ModelBundle:
    """Load the voice, the avatar renderer and (if listening) VAD, ASR and the LLM."""
    timings: dict[str, float] = {}
    device = resolve_device(config.device)
    if device == "cpu" and (os.cpu_count() or 1) <= 2:
        import torch

        # Two intra-op threads on two cores fight the encoder and the event loop: a 0.2 ms idle
        # frame cost 4.8 ms of CPU and render batches doubled under load (bench/bench_server.py).
        torch.set_num_threads(1)

    def tts():
        from models.tts import PiperTTS

        # One onnxruntime thread gave the fastest first chunk on 2 cores (bench/bench_tts.py),
        # where synthesis competes with ASR, the LLM and rendering.
        threads = 1 if (os.cpu_count() or 1) <= 2 else 2
        voice = PiperTTS(voice_path=config.voice, sample_rate=config.sample_rate, cache_dir=config.cache_dir,
                         intra_op_threads=threads)
        voice.warmup()
        return voice

    def renderer():
        drawn = build_renderer(config, device)
        drawn.idle_frame(0)  # a real frame, so a broken avatar or device fails here and not in a session
        return drawn

    bundle = ModelBundle(
        tts=_timed("voice (Piper)", timings, progress, tts),
        renderers={},
        default_avatar=config.avatar,
        timings=timings,
    )
    bundle.renderers[config.avatar] = _timed(f"avatar '{config.avatar}' ({config.renderer} renderer on {device})",
                                             timings, progress, renderer)
    if config.listen:
        load_listening(bundle, config, progress)
    return bundle


def build_renderer(config, device: str) -> LipSyncRenderer:
    from models.avatar.photo import load_avatar
    from models.avatar.store import AvatarStore

    store = AvatarStore(config.avatar_dir)
    if config.renderer != "wav2lip" and store.exists(config.avatar) and store.info(config.avatar).kind == "video":
        from models.lipsync.video_warp import VideoWarpRenderer

        return VideoWarpRenderer(store.load(config.avatar), fps=config.fps, device=device)
    avatar = load_avatar(config.avatar, config.avatar_dir, config.cache_dir)
    if config.renderer == "wav2lip":
        from models.lipsync.wav2lip_renderer import Wav2LipRenderer

        return Wav2LipRenderer(avatar.rgb, avatar.face_box, Path(config.checkpoint), fps=config.fps, device=device)
    from models.lipsync.photo_warp import PhotoWarpRenderer

    return PhotoWarpRenderer(avatar, fps=config.fps, device=device)


def load_listening(bundle: ModelBundle, config, progress: Progress = log.info) -> None:
    """VAD, ASR and the reply model."""
    from models.asr import SpeechRecognizer
    from models.vad import VoiceActivityDetector

    def vad():
        detector = VoiceActivityDetector()
        detector.stream().push(np.zeros(1600, dtype=np.float32))  # one real inference
        return detector

    bundle.vad = _timed("VAD (Silero)", bundle.timings, progress, vad)

    def asr():
        language = config.speech_language
        # On 2 cores one CTranslate2 thread recognised a question in p50 142 / p95 177 ms, its own choice
        # of threads in 172 / 233 ms (bench/bench_asr.py --threads 1 | 0): the threads only contend.
        threads = 1 if (os.cpu_count() or 1) <= 2 else 0
        recognizer = SpeechRecognizer(config.asr_model, language=language, cpu_threads=threads)
        recognizer.warmup()
        if language is not None and not recognizer.supports(language):
            raise RuntimeError(f"--language {config.language}: {recognizer.name} does not hear it "
                               "(English-only model? use --asr-model base)")
        return recognizer

    bundle.asr = _timed(f"ASR (faster-whisper {config.asr_model})", bundle.timings, progress, asr)
    if config.turn_detector == "smart":
        def turn():
            from models.turn import SmartTurnModel

            model = SmartTurnModel()
            model.warmup()
            return model

        bundle.turn = _timed("end of turn (Smart Turn v3)", bundle.timings, progress, turn)

    def llm():
        from models.llm.conversation import load_persona

        model = build_chat_model(config)
        if hasattr(model, "warmup"):
            model.warmup(load_persona(config.persona))  # puts the persona in llama.cpp's prefix cache
        return model

    bundle.llm = _timed(f"LLM ({config.llm})", bundle.timings, progress, llm)


def build_chat_model(config):
    from models.llm import make_chat_model

    if config.llm == "local":
        return make_chat_model("local", model_path=config.llm_model, thread_nice=config.work_nice)
    if config.llm == "openai":
        return make_chat_model("openai", base_url=config.llm_url, model=config.llm_model, api_key=config.llm_key)
    return make_chat_model(config.llm)
