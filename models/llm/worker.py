"""The local LLM's own process: llama.cpp loads and generates here, so a native crash in it
(a bad CPU instruction, an out-of-memory abort) ends this process and never the server.

Run by models.llm.local.LlamaChatModel as `python -m models.llm.worker '<json settings>'`.
The protocol is one JSON object per line. Requests on stdin:
  {"op": "chat", "id": N, "messages": [...], "max_tokens": .., "temperature": .., ...}
  {"op": "read", "id": N, "messages": [...]}     read a prompt into the prefix cache
  {"op": "cached", "id": N}                       the prefix cache as text (diagnostics, tests)
  {"op": "stop", "id": N}                         stop request N after its current token
Replies on the original stdout (fd 1 is pointed at stderr so llama.cpp's prints cannot
corrupt it): {"ready": {...}} once loaded and checked with a real generation, or
{"fatal": "..."}; then per request {"id": N, "delta": "..."}, {"id": N, "text": "..."},
{"id": N, "error": "..."} and finally {"id": N, "done": true, "tokens": k}.
The process ends when stdin closes: the server went away.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from models.threads import lower_thread_priority


class _Replies:
    """Writes protocol lines from both threads without interleaving them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, **message: Any) -> None:
        line = json.dumps(message, ensure_ascii=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _load(settings: dict) -> Any:
    from llama_cpp import Llama

    threads = int(settings["n_threads"])
    return Llama(
        model_path=settings["model_path"],
        n_ctx=int(settings["n_ctx"]),
        n_threads=threads,
        # Reading the prompt is batched work that scales; generating tokens is not.
        n_threads_batch=os.cpu_count() or threads,
        seed=int(settings["seed"]),
        verbose=False,
    )


def _read_prompt(llm: Any, messages: list[dict]) -> None:
    # One generated token: llama.cpp reads (and caches) the whole prompt to produce it.
    llm.create_chat_completion(messages=messages, max_tokens=1)


def _chat(llm: Any, request: dict, stopped: threading.Event, replies: _Replies) -> int:
    tokens = 0
    chunks = llm.create_chat_completion(
        messages=request["messages"],
        stream=True,
        max_tokens=int(request["max_tokens"]),
        temperature=float(request["temperature"]),
        top_p=float(request["top_p"]),
        repeat_penalty=float(request["repeat_penalty"]),
    )
    try:
        for chunk in chunks:
            if stopped.is_set():
                break
            tokens += 1
            delta = chunk["choices"][0].get("delta", {}).get("content")
            if delta:
                replies.send(id=request["id"], delta=delta)
    finally:
        chunks.close()  # lets llama.cpp finish its bookkeeping before the next request
    return tokens


def _serve(llm: Any, requests: queue.Queue, stops: dict[int, threading.Event], finished: list[int],
           replies: _Replies) -> None:
    while True:
        request = requests.get()
        if request is None:
            return
        rid = request["id"]
        stopped = stops.setdefault(rid, threading.Event())
        tokens = 0
        try:
            if stopped.is_set():
                pass  # cancelled before it started
            elif request["op"] == "chat":
                tokens = _chat(llm, request, stopped, replies)
            elif request["op"] == "read":
                _read_prompt(llm, request["messages"])
            elif request["op"] == "cached":
                text = llm.detokenize(list(llm._input_ids)).decode("utf-8", "replace")
                replies.send(id=rid, text=text)
            else:
                replies.send(id=rid, error=f"unknown request {request['op']!r}")
        except Exception as exc:  # reported to the waiting stream, which raises LLMError
            replies.send(id=rid, error=f"{type(exc).__name__}: {exc}")
        finally:
            stops.pop(rid, None)
            finished[0] = rid
            replies.send(id=rid, done=True, tokens=tokens)


def main(argv: list[str]) -> int:
    settings = json.loads(argv[1])
    replies = _Replies(os.fdopen(os.dup(1), "w", encoding="ascii"))
    os.dup2(2, 1)  # anything llama.cpp or Python prints goes to the server's stderr, not the protocol
    sys.stdout = sys.stderr
    lower_thread_priority(int(settings.get("nice", 0)))  # before any thread starts: all inherit it
    try:
        llm = _load(settings)
        # The start-up check is a real generation: a build that cannot run on this CPU dies
        # here, while the server still waits for "ready", instead of in the first turn.
        check = [{"role": "user", "content": "Hello"}]
        if settings.get("system_prompt"):
            check.insert(0, {"role": "system", "content": settings["system_prompt"]})
        _read_prompt(llm, check)
    except Exception as exc:
        replies.send(fatal=f"{type(exc).__name__}: {exc}")
        return 1
    replies.send(ready={"pid": os.getpid()})

    requests: queue.Queue = queue.Queue()
    stops: dict[int, threading.Event] = {}
    finished = [-1]  # ids are served in order: a stop for one at or below this came too late
    server = threading.Thread(target=_serve, args=(llm, requests, stops, finished, replies), name="llama",
                              daemon=True)
    server.start()
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("op") == "stop":
            if request["id"] > finished[0]:
                stops.setdefault(request["id"], threading.Event()).set()
        else:
            requests.put(request)
    requests.put(None)
    server.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
