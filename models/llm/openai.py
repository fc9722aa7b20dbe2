"""Any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, hosted APIs) over SSE."""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import aiohttp

from models.llm.base import ChatModel, LLMError


def chat_completions_url(base_url: str) -> str:
    """The chat-completions URL for a base URL such as http://localhost:11434/v1."""
    url = base_url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class OpenAIChatModel(ChatModel):
    """Streams chat completions from an OpenAI-compatible HTTP endpoint.

    api_key falls back to $OPENAI_API_KEY; local servers usually need none.
    connect_timeout_s bounds reaching the server, read_timeout_s the wait for each piece of
    the answer (the first one included, so it must cover prompt processing).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 120,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        extra_body: dict | None = None,
    ) -> None:
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self.name = f"openai:{model}@{self.url}"

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        session = self._get_session()
        try:
            async with session.post(self.url, json=body, headers=headers) as response:
                if response.status != 200:
                    raise LLMError(await self._status_message(response))
                async for payload in _sse_data(response):
                    if payload == "[DONE]":
                        return
                    delta = self._delta(payload)
                    if delta:
                        yield delta
        except LLMError:
            raise
        except asyncio.TimeoutError as exc:
            raise LLMError(
                f"the chat endpoint {self.url} did not answer in time; check that the server "
                "is running and the model is loaded, or raise read_timeout_s"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise LLMError(
                f"cannot reach the chat endpoint {self.url} ({exc}); start the server or "
                "fix the base URL"
            ) from exc
        except aiohttp.ClientError as exc:
            raise LLMError(f"request to the chat endpoint {self.url} failed: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        # A session belongs to the loop it was made on; a new loop (tests, restarts) gets its own.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._session_loop = loop
        return self._session

    async def _status_message(self, response: aiohttp.ClientResponse) -> str:
        try:
            detail = (await response.text())[:300].strip()
        except (aiohttp.ClientError, UnicodeDecodeError):
            detail = ""
        hint = {
            401: "check the API key",
            403: "check the API key and its permissions",
            404: f"check the base URL and that the model {self.model!r} exists",
            429: "the endpoint is rate-limiting; retry later",
        }.get(response.status, "see the server's log")
        return (
            f"the chat endpoint {self.url} answered HTTP {response.status}"
            f"{': ' + detail if detail else ''} ({hint})"
        )

    def _delta(self, payload: str) -> str:
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise LLMError(f"the chat endpoint {self.url} sent invalid JSON: {payload[:200]!r}") from exc
        if not isinstance(event, dict):
            return ""
        if "error" in event:
            raise LLMError(f"the chat endpoint {self.url} reported an error: {event['error']}")
        choices = event.get("choices") or []
        if not choices:
            return ""
        delta = choices[0].get("delta") or {}
        return delta.get("content") or ""


async def _sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The data of each server-sent event (multi-line data joined with newlines)."""
    data_lines: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
            continue
        if line.startswith(":"):
            continue  # SSE comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        yield "\n".join(data_lines)
