"""Chat models behind one streaming interface, plus the history and clause splitter around them."""
from __future__ import annotations

from typing import Any

from models.llm.base import ChatModel, LLMError
from models.llm.clauses import ClauseSplitter, speakable
from models.llm.conversation import DEFAULT_SYSTEM_PROMPT, ChatHistory
from models.llm.echo import EchoChatModel

CHAT_MODEL_KINDS = ("local", "openai", "echo")

__all__ = [
    "CHAT_MODEL_KINDS",
    "DEFAULT_SYSTEM_PROMPT",
    "ChatHistory",
    "ChatModel",
    "ClauseSplitter",
    "EchoChatModel",
    "LLMError",
    "make_chat_model",
    "speakable",
]


def make_chat_model(kind: str, **options: Any) -> ChatModel:
    """Build a chat model by kind: "local" (llama.cpp GGUF), "openai" (HTTP endpoint) or "echo".

    options go to the backend's constructor: local takes model_path, n_ctx, n_threads,
    max_tokens, temperature; openai takes base_url, model, api_key, max_tokens, temperature;
    echo takes delay_s.
    """
    kind = kind.strip().lower()
    # Backends are imported on demand so that echo/openai work without llama-cpp-python.
    if kind in ("local", "llama", "llama.cpp", "gguf"):
        from models.llm.local import LlamaChatModel

        return LlamaChatModel(**options)
    if kind == "openai":
        from models.llm.openai import OpenAIChatModel

        if not options.get("base_url") or not options.get("model"):
            raise LLMError("the 'openai' chat model needs base_url and model, e.g. "
                           "base_url='http://localhost:11434/v1', model='llama3.2'")
        return OpenAIChatModel(**options)
    if kind == "echo":
        return EchoChatModel(**options)
    raise LLMError(f"unknown chat model kind {kind!r}; choose one of {', '.join(CHAT_MODEL_KINDS)}")
