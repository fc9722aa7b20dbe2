"""What the outputs of a session cost and how late they are.

    python bench/bench_outputs.py [--quick] [--window-s 10]

1. CPU per added output: a real server (`run.py --listen false`) in its own process, one
   session made by POST /sessions; its CPU (percent of one core) measured with no output, then
   after adding an HLS output, a recording, an RTMP push to a private nginx, and one and then
   two WebRTC viewers (video received but not decoded, in this process). Each figure is the
   step over the one before.
2. Glass-to-glass latency, in-process server so that the clock's due times are known here:
   - HLS: hls.js in Chromium (static/watch.html) reports, for each displayed frame, its media
     time and the wall time it was shown (requestVideoFrameCallback); media time maps to the
     session's tick through the output's first keyframe; latency = shown - due.
   - RTMP: PyAV reads the stream back from nginx; latency = decoded - due, per frame.
3. Broadcast sessions at 25 fps: N headless sessions, each with an HLS output, for N = 1..4:
   late and skipped ticks and frames the H.264 encoders dropped.

Targets (issue 11): HLS live latency <= 3 s; RTMP read-back <= 1 s; an extra viewer <= 2 % of a core.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import av  # noqa: E402

from bench.common import OUT, CpuWindow, LightClient, ServerProcess, wait_quiet  # noqa: E402
from tests.rtmp_server import RtmpServer  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def post(http: aiohttp.ClientSession, url: str, body: dict, headers: dict | None = None) -> dict:
    async with http.post(url, json=body, headers=headers or {}) as resp:
        answer = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"{url}: {resp.status} {answer}")
        return answer


# ---- 1. CPU per output --------------------------------------------------------------------


async def cpu_per_output(window_s: float, folder: Path) -> dict:
    server = ServerProcess("outputs", ["--listen", "false", "--record-dir", str(folder / "rec")])
    await server.start()
    nginx = RtmpServer(folder)
    nginx.start()
    viewers: list[LightClient] = []
    results: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            session = await post(http, server.url + "/sessions", {"listen": False})
            sid, auth = session["session_id"], {"Authorization": f"Bearer {session['token']}"}
            steps = [("no output", None), ("+ hls", {"type": "hls"}), ("+ record", {"type": "record"}),
                     ("+ rtmp", {"type": "rtmp", "url": nginx.url("bench")}), ("+ viewer 1", "viewer"),
                     ("+ viewer 2", "viewer")]
            for name, what in steps:
                if isinstance(what, dict):
                    await post(http, f"{server.url}/sessions/{sid}/outputs", what, auth)
                elif what == "viewer":
                    viewer = LightClient(server.url)
                    await viewer.watch(sid, session["token"])
                    await viewer.wait_media()
                    viewers.append(viewer)
                await asyncio.sleep(2.0)  # let the new output settle (keyframe, first segments)
                others = await wait_quiet(server.pid, 15.0, 20.0)
                window = CpuWindow(server.pid)
                await asyncio.sleep(window_s)
                share = window.share()
                results[name] = share.server_pct
                print(f"  {name:12s} server {share.server_pct:5.1f} % of a core "
                      f"(rest of machine {share.others_pct:.1f} %, before the window {others:.1f} %)", flush=True)
            async with http.get(f"{server.url}/sessions/{sid}", headers=auth) as resp:
                state = await resp.json()
            drops = {o["id"]: o["stats"] for o in state["outputs"]}
            print(f"  output stats: {json.dumps(drops)}")
    finally:
        for viewer in viewers:
            await viewer.close()
        server.stop()
        nginx.stop()
    names = list(results)
    steps_pct = {names[i]: round(results[names[i]] - results[names[i - 1]], 2) for i in range(1, len(names))}
    return {"server_pct": {k: round(v, 2) for k, v in results.items()}, "step_pct": steps_pct}


# ---- 2. latency ---------------------------------------------------------------------------


async def in_process_server(folder: Path):
    from aiohttp.test_utils import TestServer

    from models.bundle import load_models
    from rtc_server.app import make_app
    from rtc_server.config import Config

    config = Config(port=0, listen=False, record_dir=folder / "rec", sessions_per_min=0)
    app = make_app(config, load_models(config))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return app, server, f"http://127.0.0.1:{server.port}"


def origin_tick(session, output_id: str) -> int | None:
    """The session tick that is media time 0 of an output (its first keyframe)."""
    worker = session.outputs[output_id].worker
    origin = getattr(worker, "_origin", None)
    return None if origin is None else round(origin * session.clock.fps)


async def hls_latency(app, base_url: str, seconds: float) -> dict:
    from playwright.async_api import async_playwright

    from rtc_server.app import SESSIONS
    from tests import needs
    from tests.test_browser import CHROMIUM_FLAGS

    async with aiohttp.ClientSession() as http:
        answer = await post(http, base_url + "/sessions", {"listen": False, "outputs": [{"type": "hls"}]})
        session = app[SESSIONS][answer["session_id"]]
        (hls,) = answer["outputs"]
        driver = await async_playwright().start()
        browser = await driver.chromium.launch(executable_path=str(needs.CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            # Each shown frame: its media time and the wall time (ms since the epoch) it was shown.
            await page.add_init_script("""
                window.shown = [];
                const hook = () => {
                  const v = document.getElementById('video');
                  if (!v || !v.requestVideoFrameCallback) { setTimeout(hook, 50); return; }
                  const cb = (now, meta) => {
                    window.shown.push([meta.mediaTime, performance.timeOrigin + meta.expectedDisplayTime]);
                    v.requestVideoFrameCallback(cb);
                  };
                  v.requestVideoFrameCallback(cb);
                };
                document.addEventListener('DOMContentLoaded', hook);
            """)
            await page.goto(base_url + hls["watch"])
            await page.wait_for_function("() => window.watch && window.watch.state === 'playing'", timeout=60_000)
            await asyncio.sleep(seconds)
            shown = await page.evaluate("() => window.shown")
        finally:
            await browser.close()
            await driver.stop()
        first = origin_tick(session, hls["id"])
        # Wall time <-> monotonic time of this process (the clock's due times are monotonic).
        offset = time.time() - time.monotonic()
        latencies = []
        for media_time, wall_ms in shown[len(shown) // 4:]:  # after hls.js settled on its live edge
            tick = first + round(media_time * session.clock.fps)
            latencies.append(wall_ms / 1000 - (session.clock.due(tick) + offset))
        async with http.delete(f"{base_url}/sessions/{answer['session_id']}",
                               headers={"Authorization": f"Bearer {answer['token']}"}):
            pass
    return {"frames": len(latencies), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(pct(latencies, 0.95), 3)}


async def rtmp_latency(app, base_url: str, folder: Path, seconds: float) -> dict:
    from rtc_server.app import SESSIONS

    nginx = RtmpServer(folder)
    nginx.start()
    try:
        async with aiohttp.ClientSession() as http:
            answer = await post(http, base_url + "/sessions",
                                {"listen": False, "outputs": [{"type": "rtmp", "url": nginx.url("lat")}]})
            session = app[SESSIONS][answer["session_id"]]
            (push,) = answer["outputs"]
            arrivals: list[tuple[float, float]] = []
            stop = threading.Event()

            def read() -> None:
                with av.open(nginx.url("lat"), timeout=(10, 10)) as container:
                    for frame in container.decode(video=0):
                        arrivals.append((frame.time, time.monotonic()))
                        if stop.is_set():
                            return

            await asyncio.sleep(1.5)
            reader = asyncio.create_task(asyncio.to_thread(read))
            await asyncio.sleep(seconds)
            stop.set()
            await reader
            first = origin_tick(session, push["id"])
            latencies = [arrived - session.clock.due(first + round(t * session.clock.fps))
                         for t, arrived in arrivals[len(arrivals) // 4:]]
            async with http.delete(f"{base_url}/sessions/{answer['session_id']}",
                                   headers={"Authorization": f"Bearer {answer['token']}"}):
                pass
    finally:
        nginx.stop()
    return {"frames": len(latencies), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(pct(latencies, 0.95), 3)}


# ---- 3. broadcast sessions at 25 fps ------------------------------------------------------


async def broadcast_sessions(app, base_url: str, counts: list[int], window_s: float) -> list[dict]:
    from rtc_server.app import SESSIONS

    rows = []
    async with aiohttp.ClientSession() as http:
        for n in counts:
            answers = [await post(http, base_url + "/sessions", {"listen": False, "outputs": [{"type": "hls"}]})
                       for _ in range(n)]
            sessions = [app[SESSIONS][a["session_id"]] for a in answers]
            # Each one talks all the time: the renderer and the encoders have work every tick.
            talk = "The quick brown fox jumps over the lazy dog, again and again, all day long."
            for a in answers:
                for _ in range(3):
                    async with http.post(f"{base_url}/sessions/{a['session_id']}/say", json={"text": talk},
                                         headers={"Authorization": f"Bearer {a['token']}"}):
                        pass
            await asyncio.sleep(2.0)
            before = [(s.stream.stats.ticks, s.stream.stats.late_ticks, s.stream.stats.skipped_ticks,
                       s.stream.stats.underruns) for s in sessions]
            start = time.monotonic()
            await asyncio.sleep(window_s)
            wall = time.monotonic() - start
            fps = []
            late = skipped = underruns = 0
            for s, (t0, l0, k0, u0) in zip(sessions, before):
                fps.append((s.stream.stats.ticks - t0) / wall)
                late += s.stream.stats.late_ticks - l0
                skipped += s.stream.stats.skipped_ticks - k0
                underruns += s.stream.stats.underruns - u0
            dropped = sum(s.encodings.feed.stats.dropped for s in sessions if s.encodings.feed is not None)
            row = {"sessions": n, "min_fps": round(min(fps), 2), "late_ticks": late, "skipped_ticks": skipped,
                   "underruns": underruns, "h264_dropped": dropped}
            print(f"  {n} broadcast session(s): {row}", flush=True)
            rows.append(row)
            for a in answers:
                async with http.delete(f"{base_url}/sessions/{a['session_id']}",
                                       headers={"Authorization": f"Bearer {a['token']}"}):
                    pass
            await asyncio.sleep(1.0)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer sessions")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma-separated: cpu,latency,broadcast")
    args = parser.parse_args()
    window = 5.0 if args.quick else args.window_s
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "cpu" not in skip:
            print("CPU per added output (server process, % of one core):", flush=True)
            results["cpu"] = await cpu_per_output(window, folder)
            print(f"  steps: {results['cpu']['step_pct']}")
        if not {"latency", "broadcast"} <= skip:
            app, server, base_url = await in_process_server(folder)
            try:
                if "latency" not in skip:
                    results["rtmp_latency"] = await rtmp_latency(app, base_url, folder, window)
                    print(f"RTMP read-back latency (clock due -> decoded by PyAV): {results['rtmp_latency']}")
                    results["hls_latency"] = await hls_latency(app, base_url, window)
                    print(f"HLS glass-to-glass (clock due -> shown by hls.js in Chromium): {results['hls_latency']}")
                if "broadcast" not in skip:
                    print("Broadcast sessions (each with HLS and speaking):", flush=True)
                    results["broadcast"] = await broadcast_sessions(app, base_url, [1, 2] if args.quick else [1, 2, 3, 4],
                                                                    window)
            finally:
                await server.close()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_outputs.json").write_text(json.dumps(results, indent=2))
    print(f"written {OUT / 'bench_outputs.json'}")


if __name__ == "__main__":
    asyncio.run(main())
