"""Does the server survive a day of traffic? Connect cycles and a long talking soak.

    python bench/bench_endurance.py cycles [--cycles 200]
    python bench/bench_endurance.py soak [--minutes 30]
    python bench/bench_endurance.py gc

cycles: a real server (`run.py --listen false`) in its own process; each cycle connects an aiortc
peer, waits for media, asks for a sentence, and ends in one of three ways in turn: the peer closes
cleanly, the client DELETEs the session first, or the peer's process is killed (no goodbye at
all; the server notices the silence). After a warm-up of 20 cycles, and again at the end once the
server holds no session: its sessions, threads, open files and RSS. Targets (issue 13): 0
leaked sessions, threads and fds; RSS growth at most 20 MB. Also the server's garbage sweeps after
sessions closed (rtc_server/sweeper.py, from /metrics): how many and how long each held the loop.

soak: one peer receives while the avatar talks without pause (a text said again whenever less
than two wait); every minute: frames received per second, freezes (no complete video frame for
more than 200 ms), the server's A/V frame counts (audio packets sent against two per video
frame: drift would show as a growing difference), and the server's RSS. Targets: 25.0 fps, 0
freezes, drift at most 1 frame, RSS flat.

gc: in this process, with the server's models loaded: objects tracked and what a full garbage
collection costs (it holds the event loop, so every session's clock), before and after the
models are frozen out of collection as the server does.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.common import OUT, LightClient, ServerProcess  # noqa: E402

TALK = ("The quick brown fox jumps over the lazy dog while the band plays on, and the people in the small "
        "town by the river talk about the weather and the news of the day.")



async def settled_figures(pid: int, seconds: float = 10.0) -> dict:
    """process_figures once the server is quiet: the fewest threads and fds seen over `seconds`
    (threads of closed peers, aiortc's decoder threads among them, end a little after)."""
    samples = []
    for _ in range(int(seconds / 0.5)):
        samples.append(process_figures(pid))
        await asyncio.sleep(0.5)
    return {"threads": min(s["threads"] for s in samples), "fds": min(s["fds"] for s in samples),
            "rss_mb": samples[-1]["rss_mb"]}


def process_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"threads": int(fields["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


async def sweep_figures(base_url: str) -> dict:
    """The server's garbage sweeps so far, from its /metrics histogram avatar_gc_sweep_seconds."""
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/metrics") as resp:
            text = await resp.text()
    values = {name: float(value) for name, value in
              (line.split() for line in text.splitlines() if line.startswith("avatar_gc_sweep_seconds_"))
              if name in ("avatar_gc_sweep_seconds_sum", "avatar_gc_sweep_seconds_count")}
    count = int(values.get("avatar_gc_sweep_seconds_count", 0))
    total = values.get("avatar_gc_sweep_seconds_sum", 0.0)
    return {"count": count, "mean_ms": round(1000 * total / count, 1) if count else None}


def collection_cost() -> dict:
    """Objects tracked and the time of a full collection with the models loaded, unfrozen and frozen."""
    import gc

    from models.bundle import load_models
    from rtc_server.config import parse_config

    bundle = load_models(parse_config([]), progress=lambda message: None)

    def full_ms() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            gc.collect()
            times.append((time.perf_counter() - start) * 1000)
        return round(min(times), 1)

    result = {"objects": len(gc.get_objects()), "full_collection_ms": full_ms()}
    gc.freeze()
    result["frozen_full_collection_ms"] = full_ms()
    del bundle
    print(f"{result['objects']} objects tracked with the models loaded: a full collection takes "
          f"{result['full_collection_ms']} ms, {result['frozen_full_collection_ms']} ms once they are frozen")
    return result


async def one_cycle(server: ServerProcess, way: str) -> None:
    if way == "vanish":
        peer = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.vanishing_peer", server.url,
                                                    stdout=subprocess.PIPE, cwd=ROOT)
        assert peer.stdout is not None
        line = await asyncio.wait_for(peer.stdout.readline(), 60)
        assert line.strip() == b"connected", line
        peer.send_signal(signal.SIGKILL)
        await peer.wait()
        return
    client = LightClient(server.url)
    await client.connect()
    try:
        await client.wait_media()
        status, _ = await client.request("POST", f"/sessions/{client.session_id}/say", json={"text": "Hello there."})
        assert status == 202
        await asyncio.sleep(0.5)
        if way == "delete":
            status, _ = await client.request("DELETE", f"/sessions/{client.session_id}")
            assert status == 204
    finally:
        await client.close()


async def cycles(count: int, warmup: int = 20) -> dict:
    # Four slots: vanished peers hold theirs for the peer timeout (~4 s) while the next cycles run.
    server = ServerProcess("endurance-cycles", ["--listen", "false", "--max-sessions", "8"])
    await server.start()
    ways = ["clean", "delete", "vanish"]
    try:
        before = None
        start = time.monotonic()
        for i in range(count):
            await one_cycle(server, ways[i % 3])
            if i + 1 == warmup:
                await server.wait_sessions(0, 30)
                before = await settled_figures(server.pid)
                print(f"after {warmup} warm-up cycles: {before}", flush=True)
            if (i + 1) % 25 == 0:
                print(f"  {i + 1} cycles, {time.monotonic() - start:.0f} s", flush=True)
        drained = await server.wait_sessions(0, 30)
        after = await settled_figures(server.pid)
        sessions = (await server.health())["sessions"]
        sweeps = await sweep_figures(server.url)
    finally:
        server.stop()
    assert before is not None
    result = {"cycles": count, "warmup": warmup, "before": before, "after": after, "sessions_left": sessions,
              "drained": drained, "leaked_threads": after["threads"] - before["threads"],
              "leaked_fds": after["fds"] - before["fds"], "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
              "gc_sweeps": sweeps}
    print(f"after {count} cycles: {after}; sessions left {sessions}, threads {result['leaked_threads']:+d}, "
          f"fds {result['leaked_fds']:+d}, RSS {result['rss_growth_mb']:+.1f} MB; {sweeps['count']} garbage sweeps, "
          f"{sweeps['mean_ms']} ms each on average")
    return result


async def soak(minutes: float) -> dict:
    server = ServerProcess("endurance-soak", ["--listen", "false", "--max-queued-utterances", "4"])
    await server.start()
    client = LightClient(server.url)
    rows = []
    try:
        await client.connect()
        await client.wait_media()
        auth = client.auth()
        path = f"{server.url}/sessions/{client.session_id}"
        async with aiohttp.ClientSession(headers=auth) as http:
            async def stats() -> dict:
                async with http.get(path) as resp:
                    return await resp.json()

            async def talk_forever() -> None:
                while True:
                    state = await stats()
                    if len(state["utterances_pending"]) < 2:
                        async with http.post(path + "/say", json={"text": TALK}):
                            pass
                    await asyncio.sleep(0.5)

            talker = asyncio.create_task(talk_forever())
            first = (await stats())["stats"]
            offset0 = first["audio_sent"] - 2 * first["video_sent"]
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                mark, frames0 = time.monotonic(), len(client.complete_video)
                await asyncio.sleep(min(60.0, end - time.monotonic()))
                times = [t for t in client.complete_video if t >= mark]
                gaps = [b - a for a, b in zip(times, times[1:])]
                s = (await stats())["stats"]
                row = {"minute": len(rows) + 1, "fps": round((len(client.complete_video) - frames0) / (time.monotonic() - mark), 2),
                       "freezes": sum(1 for g in gaps if g > 0.2), "longest_gap_ms": round(max(gaps, default=0) * 1000),
                       "av_drift_frames": (s["audio_sent"] - 2 * s["video_sent"] - offset0) / 2,
                       "speech_share": round(s["speech_frames"] / max(1, s["ticks"]), 2),
                       "rss_mb": process_figures(server.pid)["rss_mb"]}
                rows.append(row)
                print(f"  {row}", flush=True)
            talker.cancel()
    finally:
        await client.close()
        server.stop()
    return {"minutes": minutes, "rows": rows,
            "min_fps": min(r["fps"] for r in rows), "freezes": sum(r["freezes"] for r in rows),
            "max_drift_frames": max(abs(r["av_drift_frames"]) for r in rows),
            "rss_first_last_mb": [rows[0]["rss_mb"], rows[-1]["rss_mb"]]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cycles", "soak", "gc"])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    if args.what == "gc":
        result = collection_cost()
    else:
        result = await cycles(args.cycles) if args.what == "cycles" else await soak(args.minutes)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"bench_endurance_{args.what}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    asyncio.run(main())
