"""Avatar preparation in a process of its own, so that decoding, face detection and writing the
avatar never hold the server's GIL or its clocks: the process runs at a lower priority (nice)
and under a memory ceiling (RLIMIT_AS), and reports progress through a queue."""
from __future__ import annotations

import multiprocessing
import os
import resource
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

_progress: Any = None  # the worker process's own progress queue (set by its initializer)


def _start_worker(progress: Any, nice: int, memory_mb: int) -> None:
    global _progress
    _progress = progress
    if nice:
        os.nice(nice)
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def prepare_in_worker(job_id: str, data: bytes, name: str, avatar_dir: str | None, overwrite: bool,
                      filename: str) -> dict:
    """Run in the worker: prepare `data` as avatar `name`; returns the avatar's JSON description.
    PrepareError and AvatarStoreError come back as they are; MemoryError says the ceiling was hit."""
    def progress(done: int, total: int, message: str) -> None:
        _progress.put((job_id, done, total, message))

    try:
        from models.avatar.prepare import prepare
        from models.avatar.store import AvatarStore

        store = AvatarStore(Path(avatar_dir) if avatar_dir else None)
        info = prepare(data, name, store, progress=progress, overwrite=overwrite, source_name=filename)
    except (ImportError, OSError) as exc:
        # Under the ceiling a library that cannot be mapped fails to load: memory, too.
        if "failed to map" in str(exc) or "allocate memory" in str(exc):
            raise MemoryError(f"no room left to load a library: {exc}") from None
        raise
    return info.to_json() | {"worker_pid": os.getpid()}


def preparation_pool(nice: int, memory_mb: int) -> tuple[ProcessPoolExecutor, Any]:
    """A one-process pool for preparations, and the queue its progress comes back on."""
    context = multiprocessing.get_context("spawn")  # no copy of the server's threads and sockets
    progress = context.SimpleQueue()
    pool = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_start_worker,
                               initargs=(progress, nice, memory_mb))
    return pool, progress
