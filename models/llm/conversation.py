"""Per-session chat history, bounded so prompts (and prompt-processing time) stay small."""
from __future__ import annotations

from pathlib import Path

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant shown as a talking face. "
    "Your words are spoken aloud, so answer in one to three short, natural sentences. "
    "Never use markdown, lists, code, emoji or special symbols. "
    "If you do not know something, say so briefly."
)


class ChatHistory:
    """The system prompt plus the last max_turns user/assistant exchanges."""

    def __init__(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_turns: int = 6) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self._turns: list[dict] = []
        self.trims = 0  # times old turns were dropped (the prompt's start changed)

    def add_user(self, text: str) -> None:
        self._add("user", text)

    def add_assistant(self, text: str) -> None:
        """Record what the assistant actually said (after barge-in: only the spoken part)."""
        self._add("assistant", text)

    def messages(self, pending_user: str | None = None) -> list[dict]:
        """A fresh messages list for a chat model; pending_user is appended without storing it."""
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        out.extend(dict(m) for m in self._turns)
        if pending_user:
            out.append({"role": "user", "content": pending_user.strip()})
        return out

    def clear(self) -> None:
        self._turns.clear()

    def __len__(self) -> int:
        return len(self._turns)

    def _add(self, role: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        # Chat templates expect alternating roles: a user who speaks twice before any reply
        # (or a reply cut into pieces) becomes one message.
        if self._turns and self._turns[-1]["role"] == role:
            self._turns[-1]["content"] += " " + text
        else:
            self._turns.append({"role": role, "content": text})
        self._trim()

    def _trim(self) -> None:
        # Drop old turns in a block, not one per turn: each drop changes the prompt right after
        # the system prompt, and llama.cpp then re-reads the whole history (seconds on a CPU).
        if len(self._turns) > 2 * self.max_turns:
            del self._turns[: len(self._turns) - self.max_turns]
            self.trims += 1
        # The history must open with a user message, never with a dangling reply.
        while self._turns and self._turns[0]["role"] != "user":
            del self._turns[0]


def load_persona(persona: str | None) -> str:
    """The system prompt: the built-in one, the given text, or the contents of @FILE."""
    if not persona:
        return DEFAULT_SYSTEM_PROMPT
    if persona.startswith("@"):
        path = Path(persona[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"--persona {persona}: cannot read {path}: {exc.strerror}") from None
    return persona
