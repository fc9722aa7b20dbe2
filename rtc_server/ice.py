"""STUN and TURN servers for the server's peers and for the page (--ice-server, repeated).

An entry is a URL: `stun:host:3478`, `turn:host:3478?transport=udp`, `turns:host:5349`, with TURN
credentials either in the URL (`turn:NAME:PASSWORD@host:3478`, coturn's static `--user`) or made
per request from coturn's shared secret (--turn-secret, coturn `--use-auth-secret
--static-auth-secret`): username `EXPIRY:avatar`, password base64(HMAC-SHA1(secret, username)),
valid for --turn-ttl-s. The page gets the same list from GET /ice-servers.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from aiortc import RTCIceServer

_URL = re.compile(r"^(?P<scheme>stuns?|turns?):(?:(?P<user>[^:@/\s]+):(?P<password>[^@/\s]+)@)?(?P<rest>[^@\s]+)$")


class IceConfigError(ValueError):
    """An --ice-server entry that cannot be used; the message says how to write it."""


@dataclass(frozen=True)
class IceServer:
    url: str                     # without credentials
    username: str | None = None
    credential: str | None = None

    @property
    def is_turn(self) -> bool:
        return self.url.startswith("turn")


def parse_ice_servers(entries: tuple[str, ...] | list[str]) -> list[IceServer]:
    servers = []
    for entry in entries:
        match = _URL.match(entry.strip())
        if not match:
            raise IceConfigError(f"--ice-server {entry!r}: expected stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] "
                                 "or turn:NAME:PASSWORD@HOST[:PORT]")
        url = f"{match['scheme']}:{match['rest']}"
        if match["user"] and not match["scheme"].startswith("turn"):
            raise IceConfigError(f"--ice-server {entry!r}: only TURN servers take a name and password")
        servers.append(IceServer(url, match["user"], match["password"]))
    return servers


class IceServers:
    """The configured servers, with TURN credentials filled in when asked for."""

    def __init__(self, servers: list[IceServer], turn_secret: str | None = None, ttl_s: float = 86_400) -> None:
        self.servers = servers
        self.turn_secret = turn_secret
        self.ttl_s = ttl_s
        missing = [s.url for s in servers if s.is_turn and s.username is None and not turn_secret]
        if missing:
            raise IceConfigError(f"TURN server {missing[0]} has no credentials: write turn:NAME:PASSWORD@HOST "
                                 "or give coturn's shared secret with --turn-secret")

    def _credentials(self, server: IceServer, now: float) -> tuple[str | None, str | None]:
        if not server.is_turn or server.username is not None:
            return server.username, server.credential
        assert self.turn_secret is not None
        username = f"{int(now + self.ttl_s)}:avatar"
        digest = hmac.new(self.turn_secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode()

    def for_browser(self, now: float | None = None) -> list[dict]:
        """RTCPeerConnection's `iceServers`, as the page passes them on."""
        now = time.time() if now is None else now
        out = []
        for server in self.servers:
            username, credential = self._credentials(server, now)
            entry: dict = {"urls": server.url}
            if username is not None:
                entry.update(username=username, credential=credential)
            out.append(entry)
        return out

    def for_aiortc(self) -> list[RTCIceServer]:
        return [RTCIceServer(urls=e["urls"], username=e.get("username"), credential=e.get("credential"))
                for e in self.for_browser()]
