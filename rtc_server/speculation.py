"""Work on a user's turn begun during the silence before its end is certain.

The VAD ends a turn after end_silence_ms of silence; recognising the words and letting the
LLM read them only then puts ASR and the LLM's first clause after that wait. A Speculation
starts both as soon as the VAD reports a pause, keeps everything to itself (no events, no
history), and is either adopted by the real turn when the end of turn is confirmed or
cancelled when the user goes on speaking.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import AsyncIterator, Awaitable, Callable, Generic, TypeVar

import numpy as np

T = TypeVar("T")

Spawn = Callable[[Awaitable, str], asyncio.Task]


class _End:
    """Marks the end of the source in a Prefetch's buffer."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Generic[T]):
    """An async iterator read ahead of its consumer by a task of its own.

    The items wait in a buffer until someone iterates; the source's errors surface there too.
    aclose() (or cancel() where nothing can be awaited) stops the reading and closes the
    source, which for a chat model stops the generation.
    """

    def __init__(self, source: AsyncIterator[T], spawn: Spawn, name: str = "prefetch") -> None:
        self._buffer: asyncio.Queue[object] = asyncio.Queue()
        self._finished = False
        self.first_item_at: float | None = None  # monotonic time the source gave its first item
        self._task = spawn(self._pump(source), name)

    async def _pump(self, source: AsyncIterator[T]) -> None:
        try:
            async with aclosing(source):
                async for item in source:
                    if self.first_item_at is None:
                        self.first_item_at = time.monotonic()
                    self._buffer.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, as if it had read the source itself
            self._buffer.put_nowait(_Failure(exc))
            return
        self._buffer.put_nowait(_End())

    def __aiter__(self) -> "Prefetch[T]":
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        item = await self._buffer.get()
        if isinstance(item, _End):
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item  # type: ignore[return-value]

    def cancel(self) -> None:
        self._finished = True
        self._task.cancel()

    async def aclose(self) -> None:
        """Stop reading and wait until the source is closed."""
        self.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Speculation:
    """ASR of a paused turn's audio and, when it has words, the LLM's reply to them, buffered.

    recognise turns audio into text (awaitable, in a worker); messages_for gives the chat
    messages for a user text as the history stands; reply_stream opens the chat model's
    stream for such messages (None: recognise only, for an end-of-turn verdict without paying for
    a reply that may be thrown away). Nothing here sends events or touches the history: the turn
    that adopts it decides what becomes visible.
    """

    def __init__(
        self,
        audio: np.ndarray,
        recognise: Callable[[np.ndarray], Awaitable[str]],
        messages_for: Callable[[str], list[dict]],
        reply_stream: Callable[[list[dict]], AsyncIterator[str]] | None,
        spawn: Spawn,
    ) -> None:
        self.started = time.monotonic()
        self.asr_done: float | None = None
        self._spawn = spawn
        self._messages_for = messages_for
        self._reply_stream = reply_stream
        self._messages: list[dict] | None = None
        self._reply: Prefetch[str] | None = None
        self._cancelled = False
        self._text = spawn(self._recognise(recognise, audio), "speculative-asr")

    async def _recognise(self, recognise: Callable[[np.ndarray], Awaitable[str]], audio: np.ndarray) -> str:
        text = (await recognise(audio)).strip()
        self.asr_done = time.monotonic()
        if text and not self._cancelled and self._reply_stream is not None:
            self._messages = self._messages_for(text)
            self._reply = Prefetch(self._reply_stream(self._messages), self._spawn, "speculative-reply")
        return text

    async def transcript(self) -> str:
        """The recognised text (waits for the ASR if it is still running; raises its error)."""
        return await asyncio.shield(self._text)

    def reply(self, messages: list[dict]) -> Prefetch[str] | None:
        """The reply already being written, if it was started from exactly these messages.

        The caller owns what it gets (and must close it); None means start afresh (the
        history changed meanwhile, or the transcript had no words).
        """
        reply, self._reply = self._reply, None
        if reply is not None and messages != self._messages:
            reply.cancel()
            return None
        return reply

    def cancel(self) -> None:
        """Throw everything away: stop the ASR wait and the reply being written."""
        self._cancelled = True
        self._text.cancel()
        if self._reply is not None:
            self._reply.cancel()
            self._reply = None
