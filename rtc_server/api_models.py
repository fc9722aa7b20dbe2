"""The bodies the HTTP API takes, as pydantic models: validated by the routes and described in
/openapi.json from the same definitions."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rtc_server.outputs import OutputSpec

# Avatar names as the avatar store accepts them; checked before any lookup touches the disk.
AVATAR_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class OfferBody(BaseModel):
    """POST /offer and POST /sessions/{id}/viewers: the browser's WebRTC offer."""
    model_config = ConfigDict(extra="ignore")
    sdp: str
    type: Literal["offer"]
    avatar: str | None = Field(None, pattern=AVATAR_NAME)
    voice: str | None = Field(None, max_length=200)
    mode: Literal["normal", "sync-test"] = "normal"
    visemes: bool = False
    persona: str | None = Field(None, max_length=4000, description="this session's system prompt")
    barge_in: Literal["on", "clear", "off"] | None = Field(
        None, description="talking over the avatar stops it: at once (on), on a clear onset only (clear: "
                          "open speakers), never (off); default: the server's --barge-in")
    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$",
                                 description="the language the user speaks (a Whisper code such as de); needs a "
                                             "multilingual speech model (--asr-model base); default: --language")


class SessionBody(BaseModel):
    """POST /sessions: a session with no browser, and the outputs it starts with."""
    model_config = ConfigDict(extra="forbid")
    avatar: str | None = Field(None, pattern=AVATAR_NAME)
    voice: str | None = Field(None, max_length=200)
    mode: Literal["normal", "sync-test"] = "normal"
    listen: bool = True
    visemes: bool = False
    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$",
                                 description="the language the user speaks (a Whisper code such as de); needs a "
                                             "multilingual speech model (--asr-model base); default: --language")
    outputs: list[OutputSpec] = Field(default_factory=list, max_length=8)


class TextBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # Any here so that the route itself says what is wrong with a non-string (validate_text);
    # described as the string it must be.
    text: Any = Field(description="what to say or ask: a string of at most --max-text-chars",
                      json_schema_extra={"type": "string", "minLength": 1})
