"""Avatars the server can show: the built-in one, prepared ones, uploads being prepared."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable

from models.avatar.photo import DEFAULT_AVATAR
from models.avatar.store import AvatarStore, AvatarStoreError
from models.avatar.worker import prepare_in_worker, preparation_pool
from models.bundle import ModelBundle, build_renderer, resolve_device
from models.lipsync.renderer import LipSyncRenderer
from rtc_server.config import Config

log = logging.getLogger(__name__)


class UnknownAvatar(KeyError):
    pass


@dataclass
class PrepareJob:
    """One upload being turned into an avatar (progress readable while it runs)."""

    id: str
    name: str
    state: str = "queued"  # queued | running | done | failed
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    avatar: dict | None = None
    started: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        progress = self.done / self.total if self.total else (1.0 if self.state == "done" else 0.0)
        return {"job_id": self.id, "name": self.name, "state": self.state, "progress": round(progress, 3),
                "message": self.message, "error": self.error, "avatar": self.avatar}


class AvatarLibrary:
    """Lists avatars, loads their renderers on first use, and prepares uploads one at a time."""

    def __init__(self, config: Config, executor: Executor,
                 models: Callable[[], ModelBundle | None] = lambda: None) -> None:
        self.config = config
        self._models = models
        self.store = AvatarStore(config.avatar_dir)
        self.executor = executor
        self.jobs: dict[str, PrepareJob] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._prepare_slot = asyncio.Semaphore(1)
        self._pool = None       # the preparation process, started with the first upload
        self._progress = None
        self._progress_reader: threading.Thread | None = None

    def listing(self, bundle: ModelBundle | None) -> list[dict]:
        avatars = {DEFAULT_AVATAR: {"name": DEFAULT_AVATAR, "kind": "photo", "builtin": True}}
        try:
            for info in self.store.list():
                avatars[info.name] = {**info.to_json(), "builtin": False}
        except AvatarStoreError as exc:
            log.warning("avatar folder %s: %s", self.store.root, exc)
        for name in (bundle.renderers if bundle else {}):
            avatars.setdefault(name, {"name": name, "kind": "photo", "builtin": False})
        return sorted(avatars.values(), key=lambda a: a["name"])

    async def renderer(self, bundle: ModelBundle, name: str | None) -> LipSyncRenderer:
        """The renderer of avatar `name`, built on first use (several sessions share it)."""
        name = name or bundle.default_avatar
        if name in bundle.renderers:
            return bundle.renderers[name]
        if name != DEFAULT_AVATAR and not self.store.exists(name):
            known = ", ".join(a["name"] for a in self.listing(bundle))
            raise UnknownAvatar(f"unknown avatar {name!r}; available: {known} "
                                "(prepare one with POST /avatars or `python -m models.avatar prepare`)")
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._build(bundle, name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(task)

    async def _build(self, bundle: ModelBundle, name: str) -> LipSyncRenderer:
        config = dataclasses.replace(self.config, avatar=name)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        renderer = await loop.run_in_executor(self.executor, build_renderer, config, resolve_device(config.device))
        bundle.renderers[name] = renderer
        log.info("avatar %r loaded in %.1f s", name, time.perf_counter() - start)
        return renderer

    def start_prepare(self, data: bytes, name: str, filename: str, overwrite: bool) -> PrepareJob:
        """Queue `data` (a photo or short video) to become avatar `name`; progress on the job."""
        job = PrepareJob(id=secrets.token_hex(6), name=name)
        self.jobs[job.id] = job
        while len(self.jobs) > 50:  # finished jobs are kept a while for polling, not forever
            del self.jobs[next(iter(self.jobs))]
        asyncio.ensure_future(self._prepare(job, data, filename, overwrite))
        return job

    async def _prepare(self, job: PrepareJob, data: bytes, filename: str, overwrite: bool) -> None:
        from models.avatar.prepare import PrepareError

        async with self._prepare_slot:
            job.state = "running"
            loop = asyncio.get_running_loop()
            pool = self._preparation_pool(loop)
            avatar_dir = str(self.store.root)
            try:
                info = await loop.run_in_executor(pool, prepare_in_worker, job.id, data, job.name, avatar_dir,
                                                  overwrite, filename)
            except (PrepareError, AvatarStoreError) as exc:
                job.state, job.error = "failed", str(exc)
                log.info("avatar %r: preparation refused: %s", job.name, exc)
                return
            except MemoryError:
                job.state = "failed"
                job.error = (f"preparation needed more than {self.config.prepare_memory_mb} MB "
                             "(--prepare-memory-mb); use a smaller photo or a shorter video")
                log.warning("avatar %r: preparation hit the memory ceiling", job.name)
                self._stop_pool()  # a fresh process next time
                return
            except BrokenProcessPool:
                job.state, job.error = "failed", "the preparation process died (out of memory?); try a smaller file"
                log.warning("avatar %r: the preparation process died", job.name)
                self._stop_pool()
                return
            except Exception as exc:  # report, never crash the server
                job.state, job.error = "failed", f"preparation failed: {exc}"
                log.exception("avatar %r: preparation failed", job.name)
                return
            bundle = self._models()
            if bundle is not None:
                bundle.renderers.pop(job.name, None)  # an overwritten avatar is rebuilt on next use
            worker = info.pop("worker_pid")
            job.state, job.avatar = "done", info
            job.message = "ready"
            log.info("avatar %r prepared: %d frame(s), in process %d", job.name, info["frames"], worker)

    def _preparation_pool(self, loop: asyncio.AbstractEventLoop):
        if self._pool is None:
            self._pool, self._progress = preparation_pool(self.config.work_nice, self.config.prepare_memory_mb)
            queue = self._progress

            def read_progress() -> None:
                while (item := queue.get()) is not None:
                    loop.call_soon_threadsafe(self._on_progress, *item)

            self._progress_reader = threading.Thread(target=read_progress, name="prepare-progress", daemon=True)
            self._progress_reader.start()
        return self._pool

    def _on_progress(self, job_id: str, done: int, total: int, message: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.done, job.total, job.message = done, total, message

    def _stop_pool(self) -> None:
        pool, queue = self._pool, self._progress
        self._pool = self._progress = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if queue is not None:
            queue.put(None)  # ends the progress reader

    def close(self) -> None:
        """Stop the preparation process (at server shutdown)."""
        self._stop_pool()
