"""The aiohttp application: signaling, the session HTTP API, the client page, health."""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from models.audio_file import AudioFileError, decode_audio
from models.bundle import ModelBundle
from models.lipsync.cues import CueRenderer
from models.threads import lower_thread_priority
from models.tts import default_cache_dir
from rtc_server.access import AccessPolicy, access_middleware
from rtc_server.avatars import AvatarLibrary, UnknownAvatar
from rtc_server.config import Config
from rtc_server.metrics import CONTENT_TYPE, ServerMetrics
from rtc_server.conversation import conversation_factory
from rtc_server.ice import IceServers, parse_ice_servers
from rtc_server.api_models import OfferBody, SessionBody, TextBody
from rtc_server.openapi import openapi_document
from rtc_server.outputs import OutputSpec, build_output
from rtc_server.outputs.base import OutputError
from rtc_server.outputs.publish import Published
from rtc_server.outputs.record import Recordings
from rtc_server.outputs.webrtc import WebRtcPeer
from rtc_server.outputs.websocket import WebSocketClient
from rtc_server.session import Session, SpeechQueueFull, validate_text
from rtc_server.sweeper import Sweeper
from tracks.h264_feed import pick_encoder
from tracks.vp8 import configure_vp8

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MAX_BODY_BYTES = 256 * 1024          # JSON bodies
MAX_AUDIO_BYTES = 16 * 1024 * 1024    # speak_audio uploads
MAX_AUDIO_SECONDS = 120.0
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # avatar photos and videos
PLAYLIST_WAIT_S = 4.0                # a new HLS output's first segment comes within ~1.5 s

CONFIG = web.AppKey("config", Config)
SESSIONS = web.AppKey("sessions", dict)
MODELS = web.AppKey("models", object)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)            # rendering
WORK_EXECUTOR = web.AppKey("work_executor", ThreadPoolExecutor)  # TTS, ASR, decoding, avatar preparation
LOADER = web.AppKey("loader", object)
CONVERSE = web.AppKey("converse", bool)  # sessions get a conversation when the models allow
PUBLISHED = web.AppKey("published", Published)  # what outputs serve at capability URLs
RECORDINGS = web.AppKey("recordings", Recordings)
ICE = web.AppKey("ice", IceServers)
METRICS = web.AppKey("metrics", ServerMetrics)
AVATARS = web.AppKey("avatars", AvatarLibrary)
SWEEPER = web.AppKey("sweeper", Sweeper)


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def errors_as_json(request: web.Request, handler):
    """Every failure answers {"error": ...}; no stack trace reaches the client."""
    try:
        return await handler(request)
    except HttpError as exc:
        return json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason or "error")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error; see the server log")


async def in_time(request: web.Request, reading: Awaitable[T], scale: float = 1.0) -> T:
    """Await a read of the request body, or answer 408 once --body-timeout-s (times scale) passed:
    a client that announces more than it sends must not hold a connection forever."""
    seconds = request.app[CONFIG].body_timeout_s * scale
    try:
        return await asyncio.wait_for(reading, seconds)
    except asyncio.TimeoutError:
        raise HttpError(408, f"the request body did not arrive within {seconds:.0f} s") from None


async def read_body(request: web.Request, limit: int, what: str = "body", scale: float = 1.0) -> bytes:
    """The whole body, at most `limit` bytes (413), in time (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"{what} too large ({request.content_length} bytes; limit {limit})")
    try:
        raw = await in_time(request, request.read(), scale)
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, f"{what} too large (limit {limit} bytes)") from None
    if len(raw) > limit:
        raise HttpError(413, f"{what} too large ({len(raw)} bytes; limit {limit})")
    return raw


async def read_file_body(request: web.Request, limit: int, what: str,
                         wanted: Callable[[Any], bool]) -> tuple[str | None, bytes]:
    """(filename, bytes) of an upload sent raw or as a multipart form (the first part `wanted`
    accepts); at most `limit` bytes (413), in time (408), a broken form is 400."""
    if not request.content_type.startswith("multipart/"):
        return None, await read_body(request, limit, what, scale=6.0)
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"{what} too large ({request.content_length} bytes; limit {limit})")
    try:
        reader = await request.multipart()
    except (ValueError, KeyError, AssertionError):
        raise HttpError(400, "multipart body without a valid boundary in its Content-Type") from None

    async def first_file() -> tuple[str | None, bytes]:
        async for part in reader:
            if wanted(part):
                return part.filename, await part.read(decode=False)
        return None, b""

    try:
        return await in_time(request, first_file(), scale=6.0)
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, f"{what} too large (limit {limit} bytes)") from None
    except (ValueError, KeyError, AssertionError):
        raise HttpError(400, "the multipart body could not be parsed") from None


async def read_json(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await read_body(request, MAX_BODY_BYTES)
    if request.content_type != "application/json":
        # Also what keeps other sites' no-cors form posts out: those cannot send this type.
        raise HttpError(415, f"send the body as JSON with 'Content-Type: application/json' "
                             f"(got {request.content_type[:60]!r})")
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise HttpError(400, "body is not valid JSON") from None
    except RecursionError:
        raise HttpError(400, "body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise HttpError(400, f"{where}: {first.get('msg', 'invalid')}") from None


def loading_failure(app: web.Application) -> BaseException | None:
    """Why the background model loading failed, or None while it runs or once it succeeded."""
    loader = app.get(LOADER)
    if loader is not None and loader.done() and not loader.cancelled():
        return loader.exception()
    return None


def models_ready(app: web.Application) -> ModelBundle:
    bundle = app.get(MODELS)
    if bundle is None:
        failure = loading_failure(app)
        if failure is not None:
            raise HttpError(503, f"model loading failed: {failure}")
        raise HttpError(503, "models are still loading; retry when GET /healthz answers 200")
    return bundle


def session_for(request: web.Request, token: str | None = None) -> Session:
    """The session of the route, if `token` (default: the Bearer header) is its token."""
    if token is None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "missing token: send 'Authorization: Bearer <token>' from the /offer answer")
    session = request.app[SESSIONS].get(request.match_info["session_id"])
    # An id that does not exist and one whose token does not match answer alike, so that
    # neither tells a stranger which sessions are live.
    expected = session.token if session is not None else secrets.token_hex(16)
    if not hmac.compare_digest(token.strip().encode(), expected.encode()) or session is None:
        raise HttpError(404, "unknown session, or the token is not this session's (it ended or never existed)")
    return session


# ---- handlers --------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "client.html")


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    bundle = app.get(MODELS)
    if bundle is None:
        failure = loading_failure(app)
        if failure is not None:
            return json_error(503, f"model loading failed: {failure}")
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({
        "status": "ok",
        "sessions": len(app[SESSIONS]),
        "max_sessions": app[CONFIG].max_sessions,
        "avatars": [a["name"] for a in app[AVATARS].listing(bundle)],
        "load_seconds": {k: round(v, 2) for k, v in bundle.timings.items()},
    })


async def new_session(app: web.Application, avatar: str | None, voice: str | None, mode: str,
                      listen: bool = True, visemes: bool = False, persona: str | None = None,
                      barge_in: str | None = None, language: str | None = None) -> Session:
    """A started session, counted against --max-sessions; 400/503 when it cannot be made."""
    config = app[CONFIG]
    bundle = models_ready(app)
    if len(app[SESSIONS]) >= config.max_sessions:
        raise HttpError(503, f"server at capacity ({config.max_sessions} sessions, --max-sessions); try again later")
    try:
        # Viseme mode: the client draws the avatar from mouth cues; the server renders nothing.
        renderer = CueRenderer(config.fps) if visemes else await app[AVATARS].renderer(bundle, avatar)
    except UnknownAvatar as exc:
        raise HttpError(400, str(exc.args[0])) from None
    except (OSError, ValueError) as exc:
        # The cause names files on this server: it goes to the log, not to the client.
        log.error("avatar %r could not be loaded: %s", avatar, exc)
        raise HttpError(500, f"avatar {avatar!r} could not be loaded (damaged files?); "
                             "the server log says why") from None
    if len(app[SESSIONS]) >= config.max_sessions:  # loading took a while: check again
        raise HttpError(503, f"server at capacity ({config.max_sessions} sessions, --max-sessions); try again later")
    if voice not in (None, "", "default"):
        raise HttpError(400, f"unknown voice {voice!r}; this server has one voice: 'default' (--voice)")
    if language is not None and bundle.asr is not None and not bundle.asr.supports(language):
        raise HttpError(400, f"language {language!r}: the speech model {bundle.asr.name} "
                             + ("hears English only; run the server with --asr-model base for other languages"
                                if not bundle.asr.multilingual else "does not know it"))
    listener = conversation_factory(bundle) if app[CONVERSE] else None
    session = Session(config, bundle.tts, renderer, app[EXECUTOR], work_executor=app[WORK_EXECUTOR],
                      mode=mode, avatar=avatar or bundle.default_avatar, listener=listener,
                      listen=listen and config.listen, persona=persona, barge_in=barge_in, language=language,
                      on_closed=lambda s: session_closed(app, s), metrics=app[METRICS])
    app[SESSIONS][session.id] = session
    app[METRICS].sessions_started.inc()
    return session


def session_closed(app: web.Application, session: Session) -> None:
    app[SESSIONS].pop(session.id, None)
    app[SWEEPER].session_closed()


async def add_output(session: Session, output) -> dict:
    """Open `output` on `session`: 400 for what the client got wrong."""
    try:
        await session.add_output(output)
    except OutputError as exc:
        raise HttpError(400, str(exc)) from None
    return output.describe()


async def offer(request: web.Request) -> web.Response:
    body = await read_json(request, OfferBody)
    try:
        persona = validate_text(body.persona, 4000) if body.persona else None
    except ValueError as exc:
        raise HttpError(400, f"persona: {exc}") from None
    session = await new_session(request.app, body.avatar, body.voice, body.mode, visemes=body.visemes,
                                persona=persona, barge_in=body.barge_in, language=body.language)
    peer = WebRtcPeer(body.sdp, body.type, owner=True, ice_servers=request.app[ICE].for_aiortc())
    try:
        await add_output(session, peer)
        session.start()
    except BaseException:
        await session.close("offer failed")
        raise
    log.info("session %s: offer accepted (mode=%s, avatar=%s)", session.id, session.mode, session.avatar)
    assert peer.answer is not None
    return web.json_response({"sdp": peer.answer.sdp, "type": peer.answer.type, "session_id": session.id,
                              "token": session.token})


async def create_session(request: web.Request) -> web.Response:
    """POST /sessions: a session that no browser made (an announcer, a live stream, a recording)."""
    body = await read_json(request, SessionBody)
    session = await new_session(request.app, body.avatar, body.voice, body.mode, body.listen, body.visemes,
                                language=body.language)
    try:
        outputs = [await add_output(session, build_output(spec, request.app[PUBLISHED], request.app[RECORDINGS]))
                   for spec in body.outputs]
        session.start()
        session.spawn(close_when_unattended(session, request.app[CONFIG].idle_session_s), "unattended")
    except BaseException:
        await session.close("outputs failed")
        raise
    log.info("session %s: created without a browser (mode=%s, avatar=%s, outputs=%s)", session.id, session.mode,
             session.avatar, ",".join(o["type"] for o in outputs) or "none")
    return web.json_response({"session_id": session.id, "token": session.token, "outputs": outputs}, status=201)


async def close_when_unattended(session: Session, idle_s: float, poll_s: float = 1.0) -> None:
    """A session made without a browser ends after `idle_s` with nothing taking its output (no
    socket, viewer, stream or running recording): a page that made it and went away frees its slot."""
    idle = 0.0
    while True:
        await asyncio.sleep(poll_s)
        attended = any(o.state not in ("stopped", "finished") for o in session.outputs.values())
        idle = 0.0 if attended else idle + poll_s
        if idle >= idle_s:
            await session.close(f"nothing took its output for {idle_s:.0f} s (--idle-session-s)")
            return


async def post_output(request: web.Request) -> web.Response:
    session = session_for(request)
    spec = await read_json(request, OutputSpec)
    if len(session.outputs) >= 16:
        raise HttpError(429, "this session has 16 outputs; stop one first")
    return web.json_response(await add_output(session, build_output(spec, request.app[PUBLISHED], request.app[RECORDINGS])), status=201)


async def delete_output(request: web.Request) -> web.Response:
    session = session_for(request)
    if not await session.remove_output(request.match_info["output_id"], "deleted by client"):
        raise HttpError(404, "this session has no such output")
    return web.Response(status=204)


async def websocket(request: web.Request) -> web.StreamResponse:
    """GET /sessions/{id}/ws?token=...: the face stream and events out, mic audio and messages in.
    (Browsers cannot set headers on a WebSocket: the token comes in the query, or as a Bearer header.)"""
    token = request.query.get("token")
    session = session_for(request, token) if token else session_for(request)
    config = request.app[CONFIG]
    clients = sum(1 for o in session.outputs.values() if o.type == "websocket")
    if clients >= config.max_viewers:
        raise HttpError(503, f"this session has {clients} socket clients (--max-viewers); try again later")
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    client = WebSocketClient(ws, audio_rate=config.ws_audio_rate, quality=config.ws_jpeg_quality)
    try:
        await session.add_output(client)
        log.info("session %s: socket client %s connected", session.id, client.id)
        await client.receive()
    finally:
        await session.remove_output(client.id, "socket closed")
    return ws


async def post_viewer(request: web.Request) -> web.Response:
    """A recvonly WebRTC offer that watches (and hears) the session."""
    session = session_for(request)
    body = await read_json(request, OfferBody)
    viewers = sum(1 for o in session.outputs.values() if o.type == "viewer")
    if viewers >= request.app[CONFIG].max_viewers:
        raise HttpError(503, f"this session has {viewers} viewers (--max-viewers); try again later")
    peer = WebRtcPeer(body.sdp, body.type, owner=False, ice_servers=request.app[ICE].for_aiortc())
    await add_output(session, peer)
    assert peer.answer is not None
    return web.json_response({"sdp": peer.answer.sdp, "type": peer.answer.type, "viewer_id": peer.id}, status=201)


async def read_text(request: web.Request) -> str:
    """The `text` of a JSON body, cleaned and checked for speech."""
    body = await read_json(request, TextBody)
    try:
        return validate_text(body.text, request.app[CONFIG].max_text_chars)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


async def say(request: web.Request) -> web.Response:
    session = session_for(request)
    text = await read_text(request)
    try:
        return web.json_response({"utterance_id": session.say(text)}, status=202)
    except SpeechQueueFull as exc:
        raise HttpError(429, str(exc)) from None


async def chat(request: web.Request) -> web.Response:
    session = session_for(request)
    text = await read_text(request)
    if session.conversation is None:
        raise HttpError(409, "chat is not available: the server runs without a reply model (--listen false)")
    return web.json_response(session.conversation.chat(text), status=202)


async def speak_audio(request: web.Request) -> web.Response:
    """A WAV (or any audio FFmpeg reads) as the body, or as the file of a multipart form."""
    session = session_for(request)
    _, data = await read_file_body(request, MAX_AUDIO_BYTES, "audio",
                                   lambda part: part.filename or part.name in ("file", "audio"))
    loop = asyncio.get_running_loop()
    try:
        pcm = await loop.run_in_executor(request.app[WORK_EXECUTOR], decode_audio, data,
                                         session.config.sample_rate, MAX_AUDIO_SECONDS)
    except AudioFileError as exc:
        raise HttpError(400, str(exc)) from None
    try:
        uid = session.speak_audio(pcm)
    except SpeechQueueFull as exc:
        raise HttpError(429, str(exc)) from None
    return web.json_response({"utterance_id": uid, "duration_s": round(len(pcm) / session.config.sample_rate, 2)},
                             status=202)


async def interrupt(request: web.Request) -> web.Response:
    session = session_for(request)
    return web.json_response({"interrupted": session.interrupt()})


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(session_for(request).describe())


async def delete_session(request: web.Request) -> web.Response:
    session = session_for(request)
    await session.close("deleted by client")
    return web.Response(status=204)


async def ice_servers(request: web.Request) -> web.Response:
    """The STUN/TURN servers for the page's RTCPeerConnection (TURN credentials made now)."""
    return web.json_response({"iceServers": request.app[ICE].for_browser()}, headers={"Cache-Control": "no-store"})


async def published(request: web.Request) -> web.Response:
    """A playlist or segment at an output's capability URL (the key is the credential)."""
    key, name = request.match_info["key"], request.match_info["name"]
    found = request.app[PUBLISHED].get(key, name)
    if name.endswith(".m3u8"):
        # A stream just made has no segment yet: answer when it has one (a player that gets an
        # empty playlist reports an error and backs off).
        for _ in range(int(PLAYLIST_WAIT_S / 0.05)):
            if found is not None or not request.app[PUBLISHED].has(key):
                break
            await asyncio.sleep(0.05)
            found = request.app[PUBLISHED].get(key, name)
    if found is None:
        raise HttpError(404, "no such stream or segment (it ended, or the URL is wrong)")
    body, content_type = found
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})


async def download_recording(request: web.Request) -> web.StreamResponse:
    """The MP4 of a record output, with its session's token (also after the session ended)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "missing token: send 'Authorization: Bearer <token>' of the recorded session")
    output = request.app[RECORDINGS].find(request.match_info["output_id"], token.strip())
    if output is None or output.path is None or not output.path.exists():
        raise HttpError(404, "unknown recording, or the token is not its session's")
    return web.FileResponse(output.path, headers={"Content-Type": "video/mp4"})


async def embed_page(request: web.Request) -> web.StreamResponse:
    """The avatar in the widget's frame; only this server's pages and --allowed-origins may frame it."""
    allowed = " ".join(o for o in AccessPolicy.from_config(request.app[CONFIG]).allowed_origins if o != "*")
    ancestors = "*" if "*" in request.app[CONFIG].allowed_origins else f"'self' {allowed}".strip()
    return web.FileResponse(STATIC_DIR / "embed.html",
                            headers={"Content-Security-Policy": f"frame-ancestors {ancestors}"})


async def watch_page(request: web.Request) -> web.StreamResponse:
    """A page that plays an HLS output with hls.js."""
    if not request.app[PUBLISHED].has(request.match_info["key"]):
        raise HttpError(404, "no such stream (it ended, or the URL is wrong)")
    return web.FileResponse(STATIC_DIR / "watch.html")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def list_avatars(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response({"default": app[CONFIG].avatar, "avatars": app[AVATARS].listing(app.get(MODELS))})


async def upload_avatar(request: web.Request) -> web.Response:
    """?name=NAME[&overwrite=1]; the body is a photo or short video, raw or as a multipart file."""
    from models.avatar.store import AvatarStoreError, name_from_filename, validate_name

    library = request.app[AVATARS]
    sent_name, data = await read_file_body(request, MAX_UPLOAD_BYTES, "upload", lambda part: bool(part.filename))
    filename = sent_name or request.query.get("filename", "upload")
    if not data:
        raise HttpError(400, "no file: send a photo or a short video as the body or as a multipart file")
    try:
        name = validate_name(request.query.get("name") or name_from_filename(filename))
    except AvatarStoreError as exc:
        raise HttpError(400, str(exc)) from None
    if name == request.app[CONFIG].avatar:
        raise HttpError(409, f"{name!r} is this server's default avatar and is never replaced by an upload; "
                             "upload under another name (and start the server with --avatar NAME to make it the default)")
    overwrite = request.query.get("overwrite", "0").lower() in ("1", "true", "yes")
    if library.store.exists(name) and not overwrite:
        raise HttpError(409, f"avatar {name!r} exists; add overwrite=1 to replace it")
    from models.avatar.prepare import PrepareError, refuse_huge_image

    try:
        refuse_huge_image(data, "the upload")  # from the header: nothing is decoded for it
    except PrepareError as exc:
        raise HttpError(413, str(exc)) from None
    job = library.start_prepare(data, name, filename, overwrite)
    return web.json_response(job.to_json(), status=202)


async def avatar_job(request: web.Request) -> web.Response:
    job = request.app[AVATARS].jobs.get(request.match_info["job_id"])
    if job is None:
        raise HttpError(404, "unknown job (finished jobs are kept for the last 50 uploads)")
    return web.json_response(job.to_json())


# ---- construction ----------------------------------------------------------------------


async def _load_in_background(app: web.Application, load: Callable[[], ModelBundle]) -> None:
    loop = asyncio.get_running_loop()
    try:
        app[MODELS] = await loop.run_in_executor(None, load)
        log.info("models ready: %s", ", ".join(f"{k} {v:.1f}s" for k, v in app[MODELS].timings.items()))
        app[SWEEPER].freeze()
    except Exception as exc:
        log.error("model loading failed: %s", exc)
        raise


def make_app(config: Config, models: ModelBundle | Callable[[], ModelBundle],
             conversation: bool | None = None) -> web.Application:
    """Build the app around ready models, or a loader run in the background at start-up.

    `conversation`: whether sessions listen and answer (default: config.listen), when the
    models loaded allow it."""
    # The access check runs first, and outside the error handler so that errors reach allowed
    # cross-origin pages with their CORS headers.
    guard = access_middleware(AccessPolicy.from_config(config), config.sessions_per_min, config.uploads_per_min)
    app = web.Application(middlewares=[guard, errors_as_json],
                          client_max_size=MAX_UPLOAD_BYTES)
    if config.h264_encoder == "auto":
        config = dataclasses.replace(config, h264_encoder=pick_encoder("auto"))
        log.info("H.264 outputs use %s (--h264-encoder auto)", config.h264_encoder)
    app[CONFIG] = config
    configure_vp8(config.video_max_kbps)
    app[SESSIONS] = {}
    app[CONVERSE] = config.listen if conversation is None else conversation
    app[PUBLISHED] = Published()
    app[ICE] = IceServers(parse_ice_servers(config.ice_server), config.turn_secret, config.turn_ttl_s)
    app[RECORDINGS] = Recordings(config.record_dir or (config.cache_dir or default_cache_dir().parent) / "recordings")
    app[METRICS] = ServerMetrics(lambda: app[SESSIONS].values())
    app[SWEEPER] = Sweeper(on_sweep=app[METRICS].gc_sweep.observe)
    cores = os.cpu_count() or 2
    # Separate pools: a whole-sentence Piper call or an ASR pass must not delay a render batch
    # (the frame queue holds only a few hundred ms). One render thread on a 2-core machine.
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=max(1, cores - 1), thread_name_prefix="media")
    app[WORK_EXECUTOR] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="work",
                                            initializer=lower_thread_priority, initargs=(config.work_nice,))
    app[AVATARS] = AvatarLibrary(config, app[WORK_EXECUTOR], models=lambda: app.get(MODELS))
    if isinstance(models, ModelBundle):
        app[MODELS] = models

    async def start_loading(app: web.Application) -> None:
        if MODELS not in app:
            app[LOADER] = asyncio.create_task(_load_in_background(app, models))

    async def close_sessions(app: web.Application) -> None:
        sessions = list(app[SESSIONS].values())
        await asyncio.gather(*(s.close("server shutting down") for s in sessions), return_exceptions=True)
        loader = app.get(LOADER)
        if loader is not None and not loader.done():
            loader.cancel()

    async def stop_executor(app: web.Application) -> None:
        app[SWEEPER].close()
        app[AVATARS].close()
        app[EXECUTOR].shutdown(wait=False, cancel_futures=True)
        app[WORK_EXECUTOR].shutdown(wait=False, cancel_futures=True)
        # Only models this app loaded itself: a bundle handed in may serve other apps too.
        if LOADER in app and app.get(MODELS) is not None and app[MODELS].llm is not None:
            await app[MODELS].llm.aclose()

    app.on_startup.append(start_loading)
    app.on_shutdown.append(close_sessions)
    app.on_cleanup.append(stop_executor)
    app.router.add_get("/", index)
    app.router.add_get("/ws", lambda request: web.FileResponse(STATIC_DIR / "ws.html"))
    app.router.add_get("/visemes", lambda request: web.FileResponse(STATIC_DIR / "visemes.html"))
    app.router.add_get("/kiosk", lambda request: web.FileResponse(STATIC_DIR / "kiosk.html"))
    app.router.add_get("/embed", embed_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ice-servers", ice_servers)
    document = openapi_document()
    app.router.add_get("/openapi.json", lambda request: web.json_response(document))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/avatars", list_avatars)
    app.router.add_post("/avatars", upload_avatar)
    app.router.add_get("/avatars/jobs/{job_id}", avatar_job)
    app.router.add_post("/offer", offer)
    app.router.add_post("/sessions", create_session)
    app.router.add_post("/sessions/{session_id}/outputs", post_output)
    app.router.add_delete("/sessions/{session_id}/outputs/{output_id}", delete_output)
    app.router.add_post("/sessions/{session_id}/viewers", post_viewer)
    app.router.add_get("/sessions/{session_id}/ws", websocket)
    app.router.add_get("/sessions/{session_id}/recordings/{output_id}.mp4", download_recording)
    app.router.add_get("/live/{key}/{name}", published)
    app.router.add_get("/watch/{key}", watch_page)
    app.router.add_post("/sessions/{session_id}/say", say)
    app.router.add_post("/sessions/{session_id}/chat", chat)
    app.router.add_post("/sessions/{session_id}/speak_audio", speak_audio)
    app.router.add_post("/sessions/{session_id}/interrupt", interrupt)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app
