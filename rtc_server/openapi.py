"""GET /openapi.json: the HTTP API described from the same pydantic models the routes validate
with (rtc_server/api_models.py, rtc_server/outputs/OutputSpec)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rtc_server.api_models import OfferBody, SessionBody, TextBody
from rtc_server.outputs import OutputSpec

SESSION = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
OUTPUT = {"name": "output_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
ERROR = {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

# (method, path, body model, summary, answer status, session token needed, path parameters)
ROUTES: list[tuple[str, str, type[BaseModel] | None, str, int, bool, list[dict]]] = [
    ("post", "/offer", OfferBody, "Answer a browser's WebRTC offer: a new session", 200, False, []),
    ("post", "/sessions", SessionBody, "A session with no browser, with its outputs", 201, False, []),
    ("get", "/sessions/{session_id}", None, "State, stats and outputs of a session", 200, True, [SESSION]),
    ("delete", "/sessions/{session_id}", None, "End a session", 204, True, [SESSION]),
    ("post", "/sessions/{session_id}/say", TextBody, "Speak a text verbatim", 202, True, [SESSION]),
    ("post", "/sessions/{session_id}/chat", TextBody, "A typed user turn, answered by the LLM", 202, True, [SESSION]),
    ("post", "/sessions/{session_id}/interrupt", None, "Stop talking now", 200, True, [SESSION]),
    ("post", "/sessions/{session_id}/outputs", OutputSpec, "Add an output (hls, record, rtmp)", 201, True, [SESSION]),
    ("delete", "/sessions/{session_id}/outputs/{output_id}", None, "Stop an output", 204, True, [SESSION, OUTPUT]),
    ("post", "/sessions/{session_id}/viewers", OfferBody, "Another screen watching the session (recvonly offer)",
     201, True, [SESSION]),
    ("get", "/healthz", None, "200 once the models are loaded", 200, False, []),
    ("get", "/avatars", None, "The avatars a session can pick", 200, False, []),
    ("get", "/ice-servers", None, "STUN/TURN servers for the page's RTCPeerConnection", 200, False, []),
]


def openapi_document(version: str = "1") -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": {"type": "object", "required": ["error"],
                                         "properties": {"error": {"type": "string"}}}}
    paths: dict[str, dict] = {}
    for method, path, model, summary, status, token, params in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary, "parameters": params,
            "responses": {str(status): {"description": "done"}, "4XX": ERROR, "5XX": ERROR},
        }
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        if token:
            operation["security"] = [{"sessionToken": []}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Talking avatar server", "version": version,
                 "description": "Sessions, their speech and their outputs; see the README for the data "
                                "channel and WebSocket messages."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "sessionToken": {"type": "http", "scheme": "bearer", "description": "the token of the session's answer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
