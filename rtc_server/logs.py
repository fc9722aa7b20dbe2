"""Log set-up: one line per event, as text or JSON (--log-format json)."""
from __future__ import annotations

import json
import logging
import re
import sys
import time

_SESSION = re.compile(r"^session ([0-9a-f]{16})\b:? ?")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a leading 'session <id>:' becomes a `session` field."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        match = _SESSION.match(message)
        if match:
            entry["session"] = match.group(1)
            message = message[match.end():]
        entry["msg"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aioice", "aiortc", "aiohttp.access", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
