"""Helpers shared by the server benches: a run.py subprocess, CPU accounting, a light client.

Used by bench/bench_server.py; bench/bench_voice_latency.py (or any bench that needs the
real server measured on its own) may reuse them:

- `ServerProcess`: `python run.py ... --port P` on 127.0.0.1 in a subprocess (log in
  bench/out/server-<name>.log, extra environment with `env=`), ready when /healthz answers
  200; `stop()` always ends it, and the child also gets SIGTERM if the bench dies without
  running its `finally`. `wait_sessions(n)` waits until closed peers' sessions are gone.
- `process_cpu_seconds(pid)` / `CpuWindow`: CPU time of the server, of this process and of
  the whole machine over a window, in percent of one core (no psutil needed: /proc);
  `wait_quiet()` waits (bounded) for other jobs on a shared box to calm down.
- `LightClient`: the tests' `AvatarClient` (a real aiortc peer) whose received video is
  reassembled, timed and counted but not decoded, so many peers fit in one bench process
  without their VP8 decoding competing with the server for the same two cores;
  `wire_bytes` counts RTP payload bytes per kind.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.rtc_client import AvatarClient  # noqa: E402

OUT = ROOT / "bench" / "out"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): no orphaned server if the bench is killed.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class ServerProcess:
    """The real server (`run.py`) in its own process, on a free 127.0.0.1 port."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 script: Path | None = None) -> None:
        """script: another checkout's run.py (a before/after comparison); default this one's."""
        self.env = dict(env or {})  # added to this process's environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = OUT / f"server-{name}.log"
        # No rate limits: a bench connects far more often than a person (flags given in args win).
        self.args = [sys.executable, str(script or ROOT / "run.py"), "--host", "127.0.0.1", "--port", str(self.port),
                     "--sessions-per-min", "0", "--uploads-per-min", "0", *args]
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    async def start(self, timeout_s: float = 600.0) -> float:
        """Start it and wait for /healthz 200; returns the seconds that took."""
        import aiohttp

        OUT.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, preexec_fn=_die_with_parent)
        deadline = started + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with code {self.proc.returncode}; see {self.log_path}")
                try:
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout_s:.0f} s; see {self.log_path}")

    async def health(self) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + "/healthz") as resp:
                return await resp.json()

    async def wait_sessions(self, count: int, timeout_s: float = 30.0) -> bool:
        """Until the server reports `count` open sessions (closed peers take a moment)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.health()).get("sessions") == count:
                return True
            await asyncio.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ---- CPU accounting ------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after its closing ')' are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuShare:
    """CPU over one window, in percent of one core."""

    seconds: float
    server_pct: float
    bench_pct: float   # this process: the clients
    others_pct: float  # everything else on the machine
    machine_pct: float  # all of it (100 % = one core busy)

    def describe(self) -> str:
        return (f"server {self.server_pct:.1f} %, bench/clients {self.bench_pct:.1f} %, "
                f"rest of machine {self.others_pct:.1f} % (of one core, {self.seconds:.1f} s window)")


class CpuWindow:
    """Snapshot CPU counters now; `share()` gives what was used since."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.t0 = time.monotonic()
        self.server0 = process_cpu_seconds(server_pid) if server_pid else 0.0
        self.bench0 = process_cpu_seconds(os.getpid())
        self.machine0 = machine_cpu_seconds()

    def share(self) -> CpuShare:
        wall = time.monotonic() - self.t0
        server = (process_cpu_seconds(self.server_pid) - self.server0) if self.server_pid else 0.0
        bench = process_cpu_seconds(os.getpid()) - self.bench0
        machine = machine_cpu_seconds() - self.machine0

        def pct(x: float) -> float:
            return 100.0 * x / wall

        return CpuShare(wall, pct(server), pct(bench), pct(max(0.0, machine - server - bench)), pct(machine))


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


async def wait_quiet(server_pid: int | None, max_others_pct: float, timeout_s: float,
                     sample_s: float = 1.0) -> float:
    """Wait (bounded) until the rest of the machine uses under `max_others_pct` % of one core.

    Other people's jobs on a shared 2-core box would otherwise decide the figures. Returns
    the last sample, in percent of one core; the caller reports it either way.
    """
    deadline = time.monotonic() + timeout_s
    calm = 0
    while True:
        window = CpuWindow(server_pid)
        await asyncio.sleep(sample_s)
        others = window.share().others_pct
        calm = calm + 1 if others <= max_others_pct else 0
        if calm >= 2 or time.monotonic() >= deadline:
            return others


# ---- a client that does not decode video -----------------------------------------------------


class _CountingQueue(queue.Queue):
    """Stands in for an aiortc receiver's decoder queue: counts complete frames, decodes none."""

    def __init__(self, times: list[float]) -> None:
        super().__init__()
        self.times = times

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver stopping: let its decoder thread end
            super().put(item, block, timeout)
        else:
            self.times.append(time.monotonic())


class LightClient(AvatarClient):
    """An AvatarClient whose video is received (RTP, jitter buffer, NACK/PLI, RTCP) but not decoded.

    Audio is decoded as usual (Opus is cheap and the benches read it). `complete_video`
    holds the monotonic time of every fully reassembled video frame; `received.wire`
    still has the first-packet arrival per RTP timestamp.
    """

    def __init__(self, base_url: str, decode_video: bool = False) -> None:
        super().__init__(base_url)
        self.decode_video = decode_video
        self.complete_video: list[float] = []
        self.wire_bytes = {"audio": 0, "video": 0}  # RTP payload bytes received so far

    def _watch_wire(self, receiver, kind: str) -> None:
        super()._watch_wire(receiver, kind)
        timed = receiver._handle_rtp_packet

        async def counted(packet, arrival_time_ms: int) -> None:
            self.wire_bytes[kind] += len(packet.payload)
            await timed(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = counted
        if kind == "video" and not self.decode_video:
            # Swapped before setRemoteDescription starts the receiver's decoder thread, which
            # takes this queue as its input (aiortc 1.x name-mangled attribute).
            attr = "_RTCRtpReceiver__decoder_queue"
            if not hasattr(receiver, attr):
                raise RuntimeError("this aiortc has no RTCRtpReceiver.__decoder_queue; run with --decode")
            setattr(receiver, attr, _CountingQueue(self.complete_video))

    async def wait_media(self, timeout: float = 20.0) -> None:
        """Until complete video frames (not decoded here) and audio flow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.complete_video) > 5 and len(self.received.audio_times) > 10:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"media did not arrive: {len(self.complete_video)} video, "
                           f"{len(self.received.audio_times)} audio frames")

    def video_wire_times(self) -> list[float]:
        return list(self.received.wire["video"].values())
