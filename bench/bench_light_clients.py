"""Bytes and CPU of the three ways to serve a face: WebRTC VP8, the WebSocket face stream, and the
viseme stream (the client draws the face).

    python bench/bench_light_clients.py [--quick] [--window-s 10] [--max-sessions 4]

A real server (`run.py --listen false`) in its own process. For each kind, sessions that keep
talking (a long text said again and again); per session: bytes per second received by the
client (RTP payload for WebRTC, whole messages for the sockets) and the server's CPU (percent of
one core, divided by the sessions); then how many such sessions the server holds at 25 fps
(ticks per second of every session, late and skipped ticks, from GET /sessions/{id}).
For comparison, a full-frame JPEG stream at the same quality, computed here from the avatar's own
frames (bench_vp8.avatar_frames) plus the same audio.

Synthesis is what every kind of session pays to talk; each row splits the server's CPU into the
voice's (timed by the server in its synthesis worker: synthesis_cpu_s in the session's stats) and
the rest, what serving the face that way costs. For reference, Piper alone on the same text in
this process, one onnxruntime thread as the server uses on 2 cores (CPU seconds per second of
speech).

Targets (issue 12): face stream under half the bytes of a full-frame JPEG stream; a viseme
session under 1 % of a core.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.common import OUT, CpuWindow, LightClient, ServerProcess, wait_quiet  # noqa: E402

TALK = ("The quick brown fox jumps over the lazy dog while the band plays on, and the people in the "
        "small town by the river talk about the weather and the news of the day.")


class SocketClient:
    """A WebSocket client of a session made by POST /sessions: counts what arrives."""

    def __init__(self, base_url: str, visemes: bool) -> None:
        self.base_url, self.visemes = base_url, visemes
        self.bytes = 0
        self.http: aiohttp.ClientSession | None = None
        self.task: asyncio.Task | None = None

    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        async with self.http.post(self.base_url + "/sessions", json={"listen": False, "visemes": self.visemes}) as r:
            answer = await r.json()
        self.session_id, self.token = answer["session_id"], answer["token"]
        ws = await self.http.ws_connect(f"{self.base_url}/sessions/{self.session_id}/ws?token={self.token}")

        async def read() -> None:
            async for message in ws:
                self.bytes += len(message.data) if isinstance(message.data, (bytes, str)) else 0

        self.ws = ws
        self.task = asyncio.create_task(read())

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await self.ws.close()
        if self.http is not None:
            async with self.http.delete(f"{self.base_url}/sessions/{self.session_id}", headers=self.auth()):
                pass
            await self.http.close()


class RtcClient(LightClient):
    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)

    @property
    def bytes(self) -> int:
        return self.wire_bytes["audio"] + self.wire_bytes["video"]


async def keep_talking(http: aiohttp.ClientSession, base_url: str, clients: list, stop: asyncio.Event) -> None:
    """Say the text again whenever a session has less than two utterances waiting (the text lasts
    about 8 s: a look once a second keeps it talking; that look is in the server's figures)."""
    while not stop.is_set():
        for c in clients:
            async with http.get(f"{base_url}/sessions/{c.session_id}", headers=c.auth()) as r:
                state = await r.json()
            if len(state.get("utterances_pending", [])) < 2:
                async with http.post(f"{base_url}/sessions/{c.session_id}/say", json={"text": TALK}, headers=c.auth()):
                    pass
        await asyncio.sleep(1.0)


async def measure(server: ServerProcess, kind: str, count: int, window_s: float, talk: bool = True) -> dict:
    clients = []
    for _ in range(count):
        if kind == "webrtc":
            c = RtcClient(server.url)
            await c.connect()
        else:
            c = SocketClient(server.url, visemes=kind == "visemes")
            await c.connect()
        clients.append(c)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        talker = asyncio.create_task(keep_talking(http, server.url, clients, stop) if talk else stop.wait())
        await asyncio.sleep(3.0)
        await wait_quiet(server.pid, 15.0, 10.0)
        before = [c.bytes for c in clients]
        stats0 = [await session_stats(http, server.url, c) for c in clients]
        window = CpuWindow(server.pid)
        start = time.monotonic()
        await asyncio.sleep(window_s)
        share = window.share()
        wall = time.monotonic() - start
        stats1 = [await session_stats(http, server.url, c) for c in clients]
        stop.set()
        await talker
    rates = [(c.bytes - b) / wall for c, b in zip(clients, before)]
    # The voice's own CPU, timed in the server's synthesis worker: what every kind of session pays
    # to talk. The rest is what serving the face this way costs.
    synthesis_pct = 100.0 * sum(s1["synthesis_cpu_s"] - s0["synthesis_cpu_s"]
                                for s0, s1 in zip(stats0, stats1)) / wall / count
    fps = [(s1["ticks"] - s0["ticks"]) / wall for s0, s1 in zip(stats0, stats1)]
    late = sum(s1["late_ticks"] - s0["late_ticks"] + s1["skipped_ticks"] - s0["skipped_ticks"]
               for s0, s1 in zip(stats0, stats1))
    for c in clients:
        await c.close()
    await server.wait_sessions(0, 30)
    return {"kind": kind, "talking": talk, "sessions": count, "bytes_per_s": round(sum(rates) / len(rates)),
            "server_pct_per_session": round(share.server_pct / count, 2), "server_pct": round(share.server_pct, 1),
            "synthesis_pct_per_session": round(synthesis_pct, 2),
            "beyond_synthesis_pct_per_session": round(share.server_pct / count - synthesis_pct, 2),
            "min_fps": round(min(fps), 2), "late_or_skipped_ticks": late}


async def session_stats(http: aiohttp.ClientSession, base_url: str, client) -> dict:
    async with http.get(f"{base_url}/sessions/{client.session_id}", headers=client.auth()) as r:
        return (await r.json())["stats"]


def full_frame_jpeg_bytes_per_s(quality: int, audio_rate: int) -> float:
    """What a stream of whole pictures as JPEG (plus the same audio) would send per second."""
    from bench.bench_vp8 import avatar_frames
    from tracks.face_stream import jpeg_of

    frames = avatar_frames(100)["speaking"]
    height = frames[0].shape[0] * 2 // 3
    width = frames[0].shape[1]
    sizes = [len(jpeg_of(f, height, (0, 0, width, height), quality)) for f in frames]
    return sum(sizes) / len(sizes) * 25 + audio_rate * 2


def synthesis_share(text: str = TALK, runs: int = 3) -> float:
    """Percent of a core Piper spends per second of the speech it makes from `text`."""
    from models.tts import PiperTTS

    voice = PiperTTS(sample_rate=48_000, intra_op_threads=1)
    voice.warmup()
    seconds, start = 0.0, time.process_time()
    for _ in range(runs):
        seconds += sum(chunk.duration for chunk in voice.synthesize(text))
    return 100.0 * (time.process_time() - start) / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--kinds", default="webrtc,websocket,visemes", help="which of webrtc,websocket,visemes")
    args = parser.parse_args()
    window = 5.0 if args.quick else args.window_s
    counts = [1, 2] if args.quick else list(range(1, args.max_sessions + 1))
    results: dict = {"rows": []}
    results["full_frame_jpeg_bytes_per_s"] = round(full_frame_jpeg_bytes_per_s(80, 24_000))
    print(f"full-frame JPEG stream (q80, 512x512, speaking) + 24 kHz audio: "
          f"{results['full_frame_jpeg_bytes_per_s'] / 1000:.0f} kB/s", flush=True)
    results["synthesis_pct_while_talking"] = round(synthesis_share(), 1)
    print(f"Piper alone, talking without pause: {results['synthesis_pct_while_talking']:.1f} % of a core", flush=True)
    server = ServerProcess("light-clients", ["--listen", "false", "--max-sessions", str(max(counts) + 1),
                                             "--max-queued-utterances", "4"])
    await server.start()
    try:
        for kind in args.kinds.split(","):
            for n, talk in [(1, False)] + [(n, True) for n in counts]:
                row = await measure(server, kind, n, window, talk)
                results["rows"].append(row)
                print(f"  {kind:9s} x{n} {'talking' if talk else 'idle   '}: {row['bytes_per_s'] / 1000:6.1f} kB/s per session, server "
                      f"{row['server_pct_per_session']:5.1f} % of a core per session (synthesis "
                      f"{row['synthesis_pct_per_session']:4.1f} %, the rest {row['beyond_synthesis_pct_per_session']:4.1f} %), "
                      f"min {row['min_fps']:.2f} fps, "
                      f"{row['late_or_skipped_ticks']} late/skipped ticks", flush=True)
    finally:
        server.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_light_clients.json").write_text(json.dumps(results, indent=2))
    print(f"written {OUT / 'bench_light_clients.json'}")


if __name__ == "__main__":
    asyncio.run(main())
