"""Capability URLs: what an output serves over plain HTTP (HLS playlists and segments) under a
key that is hard to guess, so any player can open it without a header."""
from __future__ import annotations

import secrets
from typing import Callable

# (name) -> (body, content type), or None when there is no such file (any more).
Serve = Callable[[str], "tuple[bytes, str] | None"]


class Published:
    """The app's table of capability keys; outputs add themselves and remove themselves on stop."""

    def __init__(self) -> None:
        self._served: dict[str, Serve] = {}

    def add(self, serve: Serve) -> str:
        """Serve `serve` under a new key; returns the key."""
        key = secrets.token_urlsafe(18)
        self._served[key] = serve
        return key

    def remove(self, key: str) -> None:
        self._served.pop(key, None)

    def has(self, key: str) -> bool:
        return key in self._served

    def get(self, key: str, name: str) -> tuple[bytes, str] | None:
        serve = self._served.get(key)
        return serve(name) if serve is not None else None
