"""Worker-thread priority: background inference yields the CPU to the media clock."""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux sets it per thread).

    Meant as a ThreadPoolExecutor initializer for TTS, ASR and LLM workers: on a full machine
    their bursts then wait for the event loop, which must send packets on time. Threads that
    native libraries start from such a worker (llama.cpp's, onnxruntime's) inherit it.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("could not lower the priority of a worker thread: %s", exc)
