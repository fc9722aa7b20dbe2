"""Structured logs: one JSON object per line, with the session id as a field."""
from __future__ import annotations

import json
import logging

from rtc_server.logs import JsonFormatter


def test_json_lines_carry_the_session_id():
    record = logging.LogRecord("rtc_server.session", logging.INFO, __file__, 1,
                               "session %s: connection %s", ("0123456789abcdef", "connected"), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["session"] == "0123456789abcdef"
    assert entry["msg"] == "connection connected"
    assert entry["level"] == "info" and entry["logger"] == "rtc_server.session"


def test_lines_without_a_session_have_no_session_field():
    record = logging.LogRecord("run", logging.WARNING, __file__, 1, "models ready", (), None)
    entry = json.loads(JsonFormatter().format(record))
    assert "session" not in entry and entry["msg"] == "models ready"
