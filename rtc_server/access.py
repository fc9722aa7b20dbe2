"""Who may call what: the optional API key, the browser origins allowed to call the API, and
whether avatars may be written at all. One aiohttp middleware applies it to every request.

Session routes (say, chat, interrupt, GET/DELETE a session) are held by the session's own token
(rtc_server.app.session_for); this module guards what creates sessions, writes avatars or
exposes the server's state.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

from aiohttp import web

from rtc_server.rate_limit import RateLimiter

API_KEY_HEADER = "X-API-Key"
CORS_HEADERS = "Content-Type, Authorization, X-API-Key"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (the server then cannot be reached from outside)."""
    if host in ("localhost", ""):
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """The server's access settings, taken from Config."""

    api_key: str | None
    metrics_public: bool
    avatar_writes: bool
    allowed_origins: frozenset[str]

    @classmethod
    def from_config(cls, config) -> "AccessPolicy":
        origins = frozenset(o.strip().rstrip("/").lower() for o in (config.allowed_origins or "").split(",")
                            if o.strip())
        if config.avatar_uploads == "auto":
            # Writing avatars changes what every later visitor sees: open on a loopback-only
            # server, behind the API key otherwise.
            writes = bool(config.api_key) or is_loopback(config.host)
        else:
            writes = config.avatar_uploads == "on"
        return cls(api_key=config.api_key or None, metrics_public=config.metrics_public,
                   avatar_writes=writes, allowed_origins=origins)

    def needs_key(self, request: web.Request) -> bool:
        """Routes that create sessions, write or list server state."""
        path, method = request.path, request.method
        if method == "POST" and path in ("/offer", "/avatars", "/sessions"):
            return True
        if path.startswith("/avatars/jobs/") or path == "/ice-servers":  # (TURN credentials)
            return True
        return path == "/metrics" and not self.metrics_public

    def key_ok(self, request: web.Request) -> bool:
        if not self.api_key:
            return True
        given = request.headers.get(API_KEY_HEADER) or request.query.get("key") or ""
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def origin_ok(self, request: web.Request, origin: str) -> bool:
        """The page's own origin (same host and port as the request) or one allowed by flag."""
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        return urlsplit(origin).netloc == (request.host or "").lower()


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def is_session_start(request: web.Request) -> bool:
    """Requests that start media work: a session, a viewer, a socket."""
    path = request.path
    if request.method == "POST":
        return path in ("/offer", "/sessions") or (path.startswith("/sessions/") and path.endswith("/viewers"))
    return request.method == "GET" and path.startswith("/sessions/") and path.endswith("/ws")


def access_middleware(policy: AccessPolicy, sessions_per_min: float = 0, uploads_per_min: float = 0):
    """Refuses foreign origins, missing keys and clients over their rate before any handler runs;
    adds CORS headers. The rate limiters belong to this middleware (one app, one set)."""
    starts, uploads = RateLimiter(sessions_per_min), RateLimiter(uploads_per_min)

    @web.middleware
    async def guard(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and not policy.origin_ok(request, origin):
            # A page on another site must not drive this server from its visitors' browsers.
            return error(403, f"origin {origin[:100]} is not allowed; add it to --allowed-origins")
        if request.method == "OPTIONS" and origin is not None:
            return web.Response(status=204, headers=_cors(origin, preflight=True))
        if policy.needs_key(request) and not policy.key_ok(request):
            return error(401, f"this route needs the server's API key: send it in the {API_KEY_HEADER} header")
        if request.method == "POST" and request.path == "/avatars" and not policy.avatar_writes:
            return error(403, "avatar uploads are off on this server (they are on for loopback-only servers "
                              "or with --api-key; --avatar-uploads on forces them)")
        limiter = starts if is_session_start(request) else uploads if (
            request.method == "POST" and request.path == "/avatars") else None
        if limiter is not None:
            wait = limiter.take(request.remote or "?")
            if wait > 0:
                what = "new sessions" if limiter is starts else "avatar uploads"
                response = error(429, f"too many {what} from this address; retry in {wait:.0f} s "
                                      "(--sessions-per-min, --uploads-per-min)")
                response.headers["Retry-After"] = str(max(1, round(wait)))
                return response
        response = await handler(request)
        if origin is not None:
            response.headers.update(_cors(origin))
        return response

    return guard


def _cors(origin: str, preflight: bool = False) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Allow-Headers": CORS_HEADERS,
                        "Access-Control-Max-Age": "600"})
    return headers
