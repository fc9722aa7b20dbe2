"""A chat model that repeats the user's last message: for tests and demos without an LLM."""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from models.llm.base import ChatModel


class EchoChatModel(ChatModel):
    """Streams the last user message back word by word.

    delay_s waits between words, which makes it a stand-in for a slow model when testing
    barge-in and cancellation.
    """

    name = "echo"

    def __init__(self, delay_s: float = 0.0, prefix: str = "") -> None:
        self.delay_s = delay_s
        self.prefix = prefix

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        last_user = next(
            (m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), ""
        )
        text = f"{self.prefix}{last_user}".strip()
        # Each word keeps the whitespace before it, so the deltas join back to the text.
        for delta in re.findall(r"\s*\S+", text):
            # sleep(0) still yields to the loop, so a cancelled consumer stops us at once.
            await asyncio.sleep(self.delay_s)
            yield delta
