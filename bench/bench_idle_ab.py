"""Idle-session CPU of two server variants side by side, measured over the same windows.

    python bench/bench_idle_ab.py --a-root ../other-checkout            # that tree vs this one
    python bench/bench_idle_ab.py --b-env AVATAR_VIDEO_MAX_KBPS=300     # this tree, two settings
    python bench/bench_idle_ab.py --rounds 10 --window 8

This machine's speed drifts by up to ~1.6x within an hour, so idle CPU figures taken at
different times cannot be compared (bench_server.py --only idle prints the absolute figure).
Here both variants run at once, each as its own run.py process (say-only) with one idle
light aiortc client in this process, and each round reads both processes' CPU time over the
same window: whatever slows the machine slows both. Prints each round's pair and the median
difference B - A.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import LightClient, ServerProcess, process_cpu_seconds  # noqa: E402


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def variant(name: str, root: Path, env: dict[str, str]) -> ServerProcess:
    server = ServerProcess(f"ab-{name}", ["--listen", "false"], env)
    server.args[1] = str(root.resolve() / "run.py")  # run.py imports its own tree
    return server


async def idle_client(url: str) -> LightClient:
    client = LightClient(url)
    await client.connect()
    deadline = time.monotonic() + 30
    while len(client.received.wire["video"]) < 25:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no video from {url} within 30 s")
        await asyncio.sleep(0.1)
    return client


async def run(args) -> None:
    servers = {"A": variant("a", args.a_root, parse_env(args.a_env)),
               "B": variant("b", args.b_root, parse_env(args.b_env))}
    for name, s in servers.items():
        print(f"{name}: {s.args[1]} {' '.join(f'{k}={v}' for k, v in s.env.items())}", flush=True)
    clients: list[LightClient] = []
    try:
        await asyncio.gather(*(s.start() for s in servers.values()))
        clients = [await idle_client(s.url) for s in servers.values()]
        await asyncio.sleep(args.warmup)
        shares: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(args.rounds):
            t0 = time.monotonic()
            c0 = {name: process_cpu_seconds(s.pid) for name, s in servers.items()}
            await asyncio.sleep(args.window)
            dt = time.monotonic() - t0
            for name, s in servers.items():
                shares[name].append((process_cpu_seconds(s.pid) - c0[name]) / dt * 100)
            a, b = shares["A"][-1], shares["B"][-1]
            print(f"round {r + 1}: A {a:5.1f} %  B {b:5.1f} %  B - A {b - a:+5.1f}", flush=True)
        diffs = [b - a for a, b in zip(shares["A"], shares["B"])]
        print(f"median: A {statistics.median(shares['A']):.1f} %, B {statistics.median(shares['B']):.1f} % of a core; "
              f"B - A {statistics.median(diffs):+.1f} points (rounds from {min(diffs):+.1f} to {max(diffs):+.1f})")
    finally:
        for c in clients:
            await c.close()
        for s in servers.values():
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-root", type=Path, default=ROOT, help="checkout whose run.py is variant A (default: this one)")
    parser.add_argument("--b-root", type=Path, default=ROOT, help="checkout whose run.py is variant B (default: this one)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE", help="environment for A")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="environment for B")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of streaming before the first round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
