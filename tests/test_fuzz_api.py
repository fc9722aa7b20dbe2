"""Property-based fuzz of the HTTP API from its own OpenAPI document: bodies generated from each
operation's schema (valid ones, and arbitrary JSON, text and bytes), session ids real and made
up, sent to the real server. No answer may be a 500 or above, and every error is JSON that names
no server path."""
from __future__ import annotations

import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
async def api(media_server):
    """The document, and a live headless session (id, token) to aim the session routes at."""
    base_url, _ = media_server
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/openapi.json") as resp:
            document = await resp.json()
        async with http.post(base_url + "/sessions", json={"listen": False}) as resp:
            session = await resp.json()
    yield base_url, document, session
    # Generated bodies may be valid ones (`{}` makes a session): end every session left, so the
    # next module finds the shared server empty instead of waiting out --idle-session-s.
    from rtc_server.app import SESSIONS

    for live in list(media_server[1][SESSIONS].values()):
        await live.close("fuzz test over")


def from_schema(schema: dict, root: dict) -> st.SearchStrategy:
    """Values that fit a JSON schema of the kinds pydantic writes for these models ($ref, objects,
    strings with patterns and lengths, booleans, enums, anyOf, arrays)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(root["components"]["schemas"][name], root))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(option, root) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {name: from_schema(sub, root) for name, sub in properties.items() if name in required},
            optional={name: from_schema(sub, root) for name, sub in properties.items() if name not in required})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), root), max_size=min(schema.get("maxItems", 4), 4))
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(max_size=min(schema.get("maxLength", 60), 60))
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return st.integers(-5, 5)
    if kind == "null":
        return st.none()
    return json_values  # no type given (e.g. the `text` of say/chat): any JSON


def operations(document: dict) -> list[tuple[str, str, dict | None]]:
    out = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out.append((method, path, body))
    return out


def test_the_document_describes_every_body_route():
    from rtc_server.openapi import openapi_document

    document = openapi_document()
    assert {"/offer", "/sessions", "/sessions/{session_id}/say", "/sessions/{session_id}/outputs"} <= set(document["paths"])
    schema = document["components"]["schemas"]["SessionBody"]
    assert schema["additionalProperties"] is False and "outputs" in schema["properties"]


def operation_ids() -> list[str]:
    from rtc_server.openapi import openapi_document

    return [f"{method} {path}" for method, path, _ in operations(openapi_document())]


@pytest.mark.parametrize("operation", operation_ids())
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
async def test_no_request_gets_a_server_error(api, operation, data):
    base_url, document, session = api
    method, path, schema = next(op for op in operations(document) if f"{op[0]} {op[1]}" == operation)
    if method in ("delete",) and "{output_id}" not in path:
        return  # ending the shared session would only make later examples shallower
    if path in ("/offer", "/sessions", "/sessions/{session_id}/viewers") and method == "post":
        # Valid offers need real SDP; sessions would use up the server's slots: bodies stay invalid here,
        # the valid ones are the other tests' business.
        schema = None
    real = data.draw(st.sampled_from([True, True, True, False]), label="real session")
    session_id = session["session_id"] if real else data.draw(st.text(min_size=1, max_size=20).filter(
        lambda s: "/" not in s and "?" not in s and "#" not in s and s not in (".", "..")), label="id")
    token = session["token"] if real else data.draw(st.text(max_size=30), label="token")
    url = base_url + path.replace("{session_id}", session_id).replace("{output_id}",
                                                                      data.draw(st.text(min_size=1, max_size=12).filter(
                                                                          lambda s: "/" not in s and "?" not in s and "#" not in s and s not in (".", "..")), label="output"))
    kind = data.draw(st.sampled_from(["schema", "schema", "json", "text", "bytes"] if schema else ["json", "text", "bytes"]))
    headers = {"Authorization": f"Bearer {token}"} if token.isprintable() and "\n" not in token else {}
    if kind == "schema":
        body = json.dumps(data.draw(from_schema(schema, document), label="body")).encode()
        headers["Content-Type"] = "application/json"
    elif kind == "json":
        body = json.dumps(data.draw(json_values, label="json")).encode()
        headers["Content-Type"] = "application/json"
    elif kind == "text":
        body = data.draw(st.text(max_size=200), label="text").encode("utf-8", "surrogatepass")
        headers["Content-Type"] = data.draw(st.sampled_from(["text/plain", "application/json", "multipart/form-data"]))
    else:
        body = data.draw(st.binary(max_size=300), label="bytes")
    async with aiohttp.ClientSession() as http:
        async with http.request(method.upper(), url, data=body if method != "get" else None, headers=headers) as resp:
            text = await resp.text()
            status = resp.status
    assert status < 500, (method, url, kind, body[:200], status, text[:300])
    if status >= 400:
        assert resp.content_type == "application/json", (status, text[:200])
        message = json.loads(text)["error"]
        assert "/work/" not in message and "/home/" not in message and ".py" not in message, message
