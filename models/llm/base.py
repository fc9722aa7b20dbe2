"""The streaming chat-model interface shared by every LLM backend."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator


class LLMError(RuntimeError):
    """A chat model could not answer; the message names the cause and the fix."""


class ChatModel(ABC):
    """Turns a chat history into a stream of text deltas.

    messages are OpenAI-style dicts: {"role": "system"|"user"|"assistant", "content": str}.
    Cancelling the task that iterates stream() (or closing the iterator) stops generation
    promptly; consumers that may stop early should wrap it in contextlib.aclosing().
    """

    name: str = "chat-model"

    @abstractmethod
    def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        """Yield the reply as text deltas as soon as they are generated."""

    async def complete(self, messages: list[dict]) -> str:
        """The whole reply as one string (convenience for non-streaming callers)."""
        parts = [delta async for delta in self.stream(messages)]
        return "".join(parts)

    async def prefill(self, messages: list[dict]) -> None:
        """Read `messages` ahead of the next turn, where the model keeps a prompt cache (local)."""

    async def aclose(self) -> None:
        """Release network sessions or threads; the default has nothing to release."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
