"""What a real browser sees: A/V offset, frame rate, freezes, session capacity, voice-to-voice.

    python bench/bench_browser.py                 # the full run (~13 min on a 2-core box)
    python bench/bench_browser.py --seconds 20    # shorter windows everywhere
    python bench/bench_browser.py --skip-v2v --max-pages 3
    python bench/bench_browser.py --v2v-only --v2v-server-arg=--turn-detector=silence --out bench/out/v2v.json

Everything is measured by static/client.html itself in headless Chromium (/usr/bin/chromium)
and read back from window.avatarClient:

1. A/V offset (beep onset heard minus white-frame display time) in sync-test sessions, one page per
   sender: a warm-up (45 s: Chrome's synchroniser moves the A/V delays in steps until then), then
   half a window alone, a window while 2 other sessions on the server speak continuously (their
   viewers are light aiortc peers, as if on other machines; --load-pages opens them in this
   Chromium instead) and the other half alone. All are read in the same page, so the difference
   is what the load did, and a slow drift cancels out. Senders:
   - baseline: a minimal sender inside this script (aiohttp + aiortc, both tracks paced
     from one clock with the simplest code possible, same beep/flash pattern): the control,
     showing what the page's own measurement path and the load on Chromium do to a perfect sender;
   - the real server (run.py, say-only).
   Absolute values include the path (WebAudio FIFO, output latency, jitter buffers).
2. Received fps, dropped frames and freezes over a window of continuous speaking.
3. Concurrent speaking sessions: 1, 2, 3 ... pages until one drops below 24 fps or the
   server's renderer falls behind (its clock keeps sending 25 fps, repeating frames, so the
   underrun share is the honest capacity signal).
4. Voice-to-voice (end of the user's speech -> first avatar audio) over 10 questions on a listening
   server with the embedded LLM (--v2v-llm echo: the echo backend), questions played as the fake mic.

Writes bench/out/browser.json and bench/out/browser.png. The browser and the server share
this machine's cores, so capacity figures are lower bounds for a dedicated server.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from typing import AsyncContextManager, Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, ServerProcess, free_port  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CLIENT_HTML = ROOT / "static" / "client.html"
FPS = 25
RATE = 48_000
SYNC_WARMUP_S = 45.0  # Chrome's synchroniser settles its A/V delays in steps over ~20-50 s after connecting
LOAD_TARGET_SHIFT_MS = 15.0   # issue 5: load may move the offset's p50 by at most this
LOAD_TARGET_SPREAD_MS = 30.0  # ... and its p10-p90 spread must stay under this
SPEECH = ("The quick brown fox jumps over the lazy dog while the sun sets behind the hills. "
          "Far away a train whistles, and the people in the small town gather in the square "
          "to talk about the harvest, the weather and the news of the week. ")
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


# ---- small utilities ---------------------------------------------------------------------


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def spread(values: list[float]) -> dict:
    """n, p10, p50, p90, mean, min, max of `values` (rounded, ms or fps)."""
    if not values:
        return {"n": 0}
    xs = np.asarray(values, dtype=float)
    return {"n": int(xs.size), "p10": round(float(np.percentile(xs, 10)), 1),
            "p50": round(float(np.percentile(xs, 50)), 1), "p90": round(float(np.percentile(xs, 90)), 1),
            "mean": round(float(xs.mean()), 1), "min": round(float(xs.min()), 1), "max": round(float(xs.max()), 1)}


def show(label: str, s: dict, unit: str = "ms") -> str:
    if not s.get("n"):
        return f"{label}: no data"
    return (f"{label}: p50 {s['p50']:+.1f} {unit}, p10-p90 {s['p10']:+.1f} .. {s['p90']:+.1f} {unit} "
            f"(spread {s['p90'] - s['p10']:.1f}), n={s['n']}")


# ---- the baseline: the simplest aligned sender ---------------------------------------------


class SharedClock:
    """t0 taken when the first track is first pulled; frame n of either track is due at t0 + n*period."""

    def __init__(self) -> None:
        self.t0: float | None = None

    async def wait(self, seconds_from_t0: float) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()
        delay = self.t0 + seconds_from_t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def make_baseline_tracks(width: int, height: int):
    """A video and an audio track with the sync-test pattern: beep and white frames at t = 0, 2, 4 ... s."""
    import av
    from aiortc import MediaStreamTrack

    clock = SharedClock()
    white = np.full((height * 3 // 2, width), 128, np.uint8)
    white[:height] = 235
    dark = np.full((height * 3 // 2, width), 128, np.uint8)
    dark[:height] = 16
    beep_samples = int(0.1 * RATE)
    period = 2 * RATE
    tone = (np.sin(2 * np.pi * 1000 * np.arange(beep_samples) / RATE) * 0.5 * 32767).astype(np.int16)

    class Video(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        async def recv(self):
            await clock.wait(self.n / FPS)
            flash = (self.n % (2 * FPS)) < 3  # the ticks that carry the 100 ms beep (like the server)
            frame = av.VideoFrame.from_ndarray(white if flash else dark, format="yuv420p")
            frame.pts, frame.time_base = self.n * 90_000 // FPS, Fraction(1, 90_000)
            self.n += 1
            return frame

    class Audio(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.k = 0

        async def recv(self):
            await clock.wait(self.k * 0.02)
            start = self.k * 960
            phase = (start + np.arange(960)) % period
            pcm = np.where(phase < beep_samples, tone[np.minimum(phase, beep_samples - 1)], 0).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            self.k += 1
            return frame

    return Video(), Audio()


async def start_baseline_server(width: int, height: int):
    """The page's /, /healthz, /offer and DELETE /sessions/{id}, answered by the minimal sender."""
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    peers: dict[str, RTCPeerConnection] = {}

    async def index(request):
        return web.FileResponse(CLIENT_HTML)

    async def healthz(request):
        return web.json_response({"status": "ok", "avatars": ["pattern"]})

    async def offer(request):
        body = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sid = secrets.token_hex(8)
        peers[sid] = pc

        @pc.on("track")
        def on_track(track):
            async def drain():
                try:
                    while True:
                        await track.recv()
                except Exception:
                    pass
            asyncio.ensure_future(drain())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        video, audio = make_baseline_tracks(width, height)
        pc.addTrack(audio)
        pc.addTrack(video)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer", "session_id": sid, "token": sid})

    async def delete(request):
        pc = peers.pop(request.match_info["sid"], None)
        if pc is not None:
            await pc.close()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/offer", offer)
    app.router.add_delete("/sessions/{sid}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def stop():
        for pc in list(peers.values()):
            await pc.close()
        await runner.cleanup()

    return f"http://127.0.0.1:{port}", stop


# ---- pages --------------------------------------------------------------------------------


@dataclass
class Page:
    page: object
    context: object
    session_id: str = ""
    token: str = ""

    async def js(self, expression: str, arg=None):
        return await self.page.evaluate(expression, arg)

    async def close(self) -> None:
        try:
            await self.js("() => window.avatarClient.disconnect()")
        except Exception:
            pass
        await self.context.close()


async def open_page(browser, base_url: str, query: str) -> Page:
    context = await browser.new_context(viewport={"width": 960, "height": 720})
    page = await context.new_page()
    await page.goto(f"{base_url}/?autoconnect=1&raw=1&{query}")
    await page.wait_for_function("window.avatarClient && window.avatarClient.connected && window.avatarClient.sessionId",
                                 timeout=30_000, polling=100)
    p = Page(page, context)
    p.session_id, p.token = await p.js("() => [window.avatarClient.sessionId, window.avatarClient.token]")
    return p


@dataclass
class SessionRef:
    """A session id and token (what Talker needs from a page or a Python viewer)."""

    session_id: str
    token: str


@dataclass
class Talker:
    """Keeps one session speaking: posts long /say texts so one is always queued."""

    base_url: str
    page: Page | SessionRef
    posted: int = 0
    task: asyncio.Task | None = None
    stats: dict = field(default_factory=dict)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.page.token}"}
        url = f"{self.base_url}/sessions/{self.page.session_id}"
        async with aiohttp.ClientSession(headers=headers) as http:
            while True:
                async with http.get(url) as resp:
                    info = await resp.json()
                self.stats = info.get("stats", {})
                if len(info.get("utterances_pending", [])) < 2:
                    async with http.post(url + "/say", json={"text": SPEECH}) as resp:
                        if resp.status == 202:
                            self.posted += 1
                await asyncio.sleep(0.5)

    async def server_stats(self) -> dict:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.page.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{self.base_url}/sessions/{self.page.session_id}") as resp:
                return (await resp.json()).get("stats", {})

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# ---- measurements -------------------------------------------------------------------------


async def stop_talking(talkers: list[Talker], viewers: list) -> None:
    """Stop the talkers, then close their viewers (pages or light aiortc peers)."""
    for t in talkers:
        await t.stop()
    for v in viewers:
        await v.close()


@contextlib.asynccontextmanager
async def speaking_load(server_url: str, browser, in_browser: bool):
    """Two other sessions on the server talking without pause while the block runs.

    Their viewers are light aiortc peers (bench/common.LightClient, no video decoding) since in
    real use they sit on their own machines and only the server's load should reach the page
    measured; `in_browser` opens them as pages in the same Chromium instead.
    """
    from bench.common import LightClient

    if in_browser:
        others = [await open_page(browser, server_url, "") for _ in range(2)]
        viewers = others
    else:
        others = [LightClient(server_url) for _ in range(2)]
        for c in others:
            await c.connect()
        viewers = [SessionRef(c.session_id, c.token) for c in others]
    talkers = [Talker(server_url, v) for v in viewers]
    for t in talkers:
        t.start()
    try:
        await asyncio.sleep(3)  # both are speaking before the window opens
        yield
    finally:
        await stop_talking(talkers, others)


def summarize_sync(sync: dict) -> None:
    """Print and store, per page, what the load did to the offset (loaded window minus alone)."""
    b = sync["baseline"]
    print(f"  page audio output latency {b['audio_output_latency_ms']} ms, base latency "
          f"{b['audio_base_latency_ms']} ms (included in every offset above)", flush=True)
    for name in ("server", "baseline"):
        w = sync[name]["windows"]
        alone, loaded = w["alone"]["offsets_ms"], w["loaded"]["offsets_ms"]
        if not (alone.get("n") and loaded.get("n")):
            continue
        shift = round(loaded["p50"] - alone["p50"], 1)
        spread_ms = round(loaded["p90"] - loaded["p10"], 1)
        ok = abs(shift) <= LOAD_TARGET_SHIFT_MS and spread_ms < LOAD_TARGET_SPREAD_MS
        sync[name]["load_shift_ms"], sync[name]["loaded_spread_ms"] = shift, spread_ms
        role = "" if name == "server" else " (control: the same load, a perfectly aligned sender)"
        verdict = f" -> {'meets' if ok else 'MISSES'} the targets (|shift| <= {LOAD_TARGET_SHIFT_MS:.0f}, " \
                  f"spread < {LOAD_TARGET_SPREAD_MS:.0f})" if name == "server" else ""
        print(f"  {name}{role}: loaded p50 - alone p50 = {shift:+.1f} ms, loaded spread {spread_ms:.1f} ms{verdict}",
              flush=True)
    sa, ba = sync["server"]["windows"]["alone"]["offsets_ms"], b["windows"]["alone"]["offsets_ms"]
    if sa.get("n") and ba.get("n"):
        sync["server"]["alone_minus_baseline_ms"] = round(sa["p50"] - ba["p50"], 1)
        print(f"  server alone p50 - baseline alone p50 = {sa['p50'] - ba['p50']:+.1f} ms (two pages: each settles "
              "anywhere inside Chrome's +-30 ms no-correction band)", flush=True)


async def measure_sync(browser, base_url: str, label: str, warmup_s: float,
                       windows: list[tuple[str, float, Callable[[], AsyncContextManager] | None]]) -> dict:
    """A/V offsets seen by one sync-test page: a warm-up, then each (name, seconds, load) window in turn;
    windows with the same name are pooled.

    All windows are read in the same page, so they share the A/V delays Chrome's synchroniser
    settled on during the warm-up: a difference between them is what the load did, not where
    a fresh page happened to settle (anywhere inside its +-30 ms no-correction band).
    """
    page = await open_page(browser, base_url, "mode=sync-test&stats=1")
    bounds: dict[str, list[tuple[float, float]]] = {}
    try:
        t_start = await page.js("() => performance.now()")
        await asyncio.sleep(warmup_s)
        for name, seconds, load in windows:
            async with (load() if load is not None else contextlib.nullcontext()):
                t0 = await page.js("() => performance.now()")
                await asyncio.sleep(seconds)
                bounds.setdefault(name, []).append((t0, await page.js("() => performance.now()")))
        pairs = await page.js("() => window.avatarClient.syncPairs")
        latency = await page.js("() => window.avatarClient.audio.latency()")
        stats = await page.js("() => window.avatarClient.stats")
        history = await page.js("() => window.avatarClient.statsHistory")
    finally:
        await page.close()
    series = [[round((p["flash"] - t_start) / 1000, 2), round(p["offset"], 2)] for p in pairs]
    result = {
        "label": label,
        "warmup_s": warmup_s,
        "series": series,
        "settled_after_s": settled_after(series, warmup_s),
        "windows": {},
        "audio_output_latency_ms": latency.get("outputLatencyMs") if latency else None,
        "audio_base_latency_ms": latency.get("baseLatencyMs") if latency else None,
        "frame_size": [stats.get("frameWidth"), stats.get("frameHeight")],
    }
    for name, spans in bounds.items():
        def inside(t: float, spans=spans) -> bool:
            return any(t0 <= t < t1 for t0, t1 in spans)

        window = [h for h in history if inside(h["t"])]
        w = {
            "spans_s": [[round((t0 - t_start) / 1000, 1), round((t1 - t_start) / 1000, 1)] for t0, t1 in spans],
            "offsets_ms": spread([p["offset"] for p in pairs if inside(p["flash"])]),
            "video_jitter_buffer_ms": jitter_buffers(window, "videoJitterBufferMs"),
            "audio_jitter_buffer_ms": jitter_buffers(window, "audioJitterBufferMs"),
            # Chrome's estimatedPlayoutTimestamp, audio minus video: its own A/V alignment
            "chrome_av_ms": jitter_buffers(window, "chromeAvMs"),
        }
        result["windows"][name] = w
        c = w["chrome_av_ms"]
        print(show(f"  {label}, {name}", w["offsets_ms"]) + f"; jitter buffers p50 video "
              f"{w['video_jitter_buffer_ms'].get('p50')} ms, audio {w['audio_jitter_buffer_ms'].get('p50')} ms; "
              f"Chrome's own A/V estimate p50 {c.get('p50')} ms (p10-p90 {c.get('p10')} .. {c.get('p90')})",
              flush=True)
    print(f"    offset settled {result['settled_after_s']} s after connecting "
          f"(warm-up {warmup_s:.0f} s; Chrome's synchroniser moves the delays in steps until then)", flush=True)
    return result


def settled_after(series: list[list[float]], warmup_s: float, tolerance_ms: float = 10.0) -> float | None:
    """Seconds after connecting from which the offsets stay within `tolerance_ms` of where the
    warm-up ended (median of its last 3), up to the warm-up's end; None if it has no pairs."""
    during = [(t, o) for t, o in series if t < warmup_s]
    if not during:
        return None
    end = statistics.median(o for _, o in during[-3:])
    settled = during[-1][0]
    for t, o in reversed(during):
        if abs(o - end) > tolerance_ms:
            break
        settled = t
    return settled


def jitter_buffers(history: list[dict], key: str) -> dict:
    """Spread of one of the page's once-a-second figures (ms: a jitter-buffer delay...) over a window."""
    return spread([h[key] for h in history if h.get(key) is not None])


async def page_counters(page: Page) -> dict:
    return await page.js("() => { const s = window.avatarClient.stats; return {t: s.t, decoded: s.framesDecoded,"
                         " dropped: s.framesDropped, freezes: s.freezeCount, freezeS: s.totalFreezesDuration,"
                         " fps: s.fps, vjb: s.videoJitterBufferMs, ajb: s.audioJitterBufferMs}; }")


async def measure_speaking(browser, base_url: str, seconds: float) -> dict:
    """Frame rate, drops and freezes of one page while its avatar talks without pause."""
    page = await open_page(browser, base_url, "stats=1")
    talker = Talker(base_url, page)
    talker.start()
    try:
        await asyncio.sleep(4)  # first utterance on air, counters primed
        t_start = await page.js("() => performance.now()")
        first, server0 = await page_counters(page), await talker.server_stats()
        fps_series = []
        for _ in range(int(seconds)):
            await asyncio.sleep(1)
            fps_series.append((await page_counters(page))["fps"])
        last, server1 = await page_counters(page), await talker.server_stats()
        history = [h for h in await page.js("() => window.avatarClient.statsHistory") if h["t"] >= t_start]
    finally:
        await talker.stop()
        await page.close()
    elapsed = (last["t"] - first["t"]) / 1000
    speech = server1.get("speech_frames", 0) - server0.get("speech_frames", 0)
    underruns = server1.get("underruns", 0) - server0.get("underruns", 0)
    result = {
        "seconds": round(elapsed, 1),
        "fps_mean": round((last["decoded"] - first["decoded"]) / elapsed, 2),
        "fps_per_second": spread([f for f in fps_series if f is not None]),
        "fps_series": fps_series,
        "frames_dropped": last["dropped"] - first["dropped"],
        "freezes": last["freezes"] - first["freezes"],
        "freeze_seconds": round(last["freezeS"] - first["freezeS"], 3),
        "video_jitter_buffer_ms": jitter_buffers(history, "videoJitterBufferMs"),
        "audio_jitter_buffer_ms": jitter_buffers(history, "audioJitterBufferMs"),
        "server_speech_frames": speech,
        "server_underruns": underruns,
        "server_late_ticks": server1.get("late_ticks", 0) - server0.get("late_ticks", 0),
        "server_skipped_ticks": server1.get("skipped_ticks", 0) - server0.get("skipped_ticks", 0),
    }
    print(f"  continuous speaking {elapsed:.0f} s: {result['fps_mean']:.2f} fps received, "
          f"{result['frames_dropped']} dropped, {result['freezes']} freezes ({result['freeze_seconds']} s); "
          f"jitter buffers p50 video {result['video_jitter_buffer_ms'].get('p50')} ms, "
          f"audio {result['audio_jitter_buffer_ms'].get('p50')} ms; "
          f"server: {speech} speech frames, {underruns} underruns, {result['server_late_ticks']} late ticks", flush=True)
    return result


async def measure_capacity(browser, base_url: str, max_pages: int, window_s: float) -> list[dict]:
    """Add speaking sessions one at a time until one falls below 24 fps or the renderer falls behind."""
    pages: list[Page] = []
    talkers: list[Talker] = []
    rows = []
    try:
        for n in range(1, max_pages + 1):
            try:
                page = await open_page(browser, base_url, "stats=1")
            except Exception as exc:
                print(f"  {n} sessions: could not open another page ({exc})", flush=True)
                break
            pages.append(page)
            talker = Talker(base_url, page)
            talker.start()
            talkers.append(talker)
            await asyncio.sleep(4)
            before = [await page_counters(p) for p in pages]
            server_before = [await t.server_stats() for t in talkers]
            await asyncio.sleep(window_s)
            after = [await page_counters(p) for p in pages]
            server_after = [await t.server_stats() for t in talkers]
            fps = [(a["decoded"] - b["decoded"]) / ((a["t"] - b["t"]) / 1000) for a, b in zip(after, before)]
            speech = sum(a.get("speech_frames", 0) - b.get("speech_frames", 0) for a, b in zip(server_after, server_before))
            under = sum(a.get("underruns", 0) - b.get("underruns", 0) for a, b in zip(server_after, server_before))
            late = sum(a.get("late_ticks", 0) - b.get("late_ticks", 0) for a, b in zip(server_after, server_before))
            freezes = sum(a["freezes"] - b["freezes"] for a, b in zip(after, before))
            share = under / (speech + under) if speech + under else 0.0
            row = {"sessions": n, "fps_min": round(min(fps), 2), "fps_mean": round(statistics.mean(fps), 2),
                   "fps": [round(f, 2) for f in fps], "freezes": freezes, "server_underrun_share": round(share, 4),
                   "server_late_ticks": late}
            rows.append(row)
            print(f"  {n} speaking sessions: fps min {row['fps_min']:.1f} mean {row['fps_mean']:.1f}, "
                  f"freezes {freezes}, renderer underruns {share:.1%}, late ticks {late}", flush=True)
            if row["fps_min"] < 24 or share > 0.05:
                row["limit"] = "fps below 24" if row["fps_min"] < 24 else "renderer behind (>5% underruns)"
                break
    finally:
        await stop_talking(talkers, pages)
    return rows


async def measure_v2v(driver, questions: int, llm: str, server_args: tuple[str, ...] = (),
                      server_script: Path | None = None) -> dict:
    """Page-measured voice-to-voice on a listening server, plus the server's stage spans."""
    from bench.bench_voice_latency import QUESTIONS
    from tests.speech_samples import espeak

    import soxr

    count = max(2, min(len(QUESTIONS), questions))
    # Room for the whole answer before the next question: echo repeats a few words, the
    # embedded LLM says up to three sentences.
    gap_s = 9.0 if llm == "echo" else 14.0
    parts = [np.zeros(int(2.0 * RATE), np.float32)]
    for q in QUESTIONS[:count]:
        parts.append(soxr.resample(espeak(q), 16_000, RATE).astype(np.float32))
        parts.append(np.zeros(int(gap_s * RATE), np.float32))
    audio = (np.concatenate(parts) * 0.8 * 32767).astype(np.int16)
    total_s = len(audio) / RATE
    server = ServerProcess("v2v", ["--listen", "true", "--llm", llm, "--max-sessions", "2", *server_args],
                           script=server_script)
    await server.start()
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "questions.wav", audio)
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS + [
            f"--use-file-for-fake-audio-capture={wav}%noloop"])
        try:
            page = await open_page(browser, server.url, "stats=1")
            await asyncio.sleep(total_s + 2)
            details = await page.js("() => window.avatarClient.v2vDetails")
            history = await page.js("() => window.avatarClient.statsHistory")
            import aiohttp

            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {page.token}"}) as http:
                async with http.get(f"{server.url}/sessions/{page.session_id}") as resp:
                    turns = (await resp.json()).get("turns", [])
            await page.close()
        finally:
            await browser.close()
            server.stop()
    latencies = [d["latencyMs"] for d in details]
    stages = [t.get("stages_ms", {}) for t in turns]
    verdicts = [{k: t.get(k) for k in ("user_text", "turn_verdict", "turn_reason", "turn_probability", "ended_by")}
                for t in turns]
    summary = spread(latencies)
    if latencies:
        summary["p95"] = round(float(np.percentile(latencies, 95)), 1)
    result = {"questions": count, "llm": llm, "server_args": list(server_args),
              "server_script": str(server_script or "run.py"), "page_v2v_ms": summary, "turns": details, "server_stages_ms": stages,
              "server_verdicts": verdicts,
              "start_of_measurement": sorted({d["from"] for d in details}),
              # Where the time outside the server goes on the way back: Chrome's audio jitter
              # buffer (it also holds audio back to meet the video), its playout, WebAudio's output.
              "page_audio_path_ms": {key: jitter_buffers(history, key).get("p50")
                                     for key in ("audioJitterBufferMs", "videoJitterBufferMs", "playoutDelayMs",
                                                 "outputLatencyMs", "chromeAvMs")}}
    if latencies:
        print(f"  voice-to-voice p50 {summary['p50']:.0f} ms, p95 {summary['p95']:.0f} ms", flush=True)
    print("  page audio path p50: " + ", ".join(f"{k} {v}" for k, v in result["page_audio_path_ms"].items()), flush=True)
    print(f"  voice-to-voice over {len(latencies)} of {count} questions: "
          + (", ".join(f"{x:.0f}" for x in latencies) or "none") + " ms "
          f"(page: end of mic speech -> first avatar audio; from {result['start_of_measurement']})", flush=True)
    for i, (s, verdict) in enumerate(zip(stages, verdicts)):
        print(f"    turn {i + 1} server stages: " + " ".join(f"{k}={v}" for k, v in s.items() if v is not None)
              + f"  ({verdict['turn_verdict']} by {verdict['turn_reason']}, p={verdict['turn_probability']},"
              f" ended by {verdict['ended_by']}: {verdict['user_text']!r})", flush=True)
    return result


# ---- plot (Pillow; matplotlib is not a dependency) ------------------------------------------


def nice_ticks(xmax: float) -> list[float]:
    """About six round tick values from 0 to xmax."""
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300) if xmax / s <= 7)
    return list(range(0, int(xmax) + 1, step))


def plot(results: dict, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    W, H = 1200, 1260
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    d.font = font  # every d.text below uses it
    colours = {"baseline": (120, 120, 120), "server": (214, 39, 40)}

    def axes(box, xr, yr, title, xlabel, ylabel, yticks, xticks):
        x0, y0, x1, y1 = box
        d.rectangle(box, outline="black")
        d.text((x0, y0 - 22), title, fill="black")
        d.text(((x0 + x1) // 2 - 40, y1 + 22), xlabel, fill="black")
        d.text((x0 - 100, (y0 + y1) // 2 - 8), ylabel, fill="black")
        for v in yticks:
            y = y1 - (v - yr[0]) / (yr[1] - yr[0]) * (y1 - y0)
            d.line((x0, y, x1, y), fill=(225, 225, 225))
            d.text((x0 - 45, y - 8), f"{v:g}", fill="black")
        for v in xticks:
            x = x0 + (v - xr[0]) / (xr[1] - xr[0]) * (x1 - x0)
            d.text((x - 8, y1 + 5), f"{v:g}", fill="black", font=font)

        def to(x, y):
            return (x0 + (x - xr[0]) / (xr[1] - xr[0]) * (x1 - x0),
                    y1 - (min(max(y, yr[0]), yr[1]) - yr[0]) / (yr[1] - yr[0]) * (y1 - y0))
        return to

    # 1. offset over time
    sync = results.get("sync", {})
    series = {k: v["series"] for k, v in sync.items() if v.get("series")}
    if series:
        xmax = max(p[0] for s in series.values() for p in s) + 1
        ys = [p[1] for s in series.values() for p in s]
        lo, hi = math.floor(min(ys + [0]) / 50) * 50, math.ceil(max(ys + [0]) / 50) * 50
        hi = max(hi, lo + 50)
        to = axes((110, 60, W - 40, 380), (0, xmax), (lo, hi), "A/V offset seen by the page (beep - flash), per pair",
                  "seconds since the page connected", "ms", range(int(lo), int(hi) + 1, 50 if hi - lo <= 400 else 100),
                  nice_ticks(xmax))
        # warm-up end and the loaded window (both pages use the same lengths)
        first = next(iter(sync.values()))
        for span in first.get("windows", {}).get("loaded", {}).get("spans_s", []):
            (xa, ya), (xb, yb) = to(span[0], hi), to(span[1], lo)
            d.rectangle((xa, ya, xb, yb), fill=(253, 235, 235))
            d.text((xa, yb - 18), " loaded (2 other sessions speaking)", fill=(150, 150, 150))
        d.line((*to(first["warmup_s"], lo), *to(first["warmup_s"], hi)), fill=(200, 200, 200))
        d.text(to(first["warmup_s"], hi), " warm-up ends", fill=(150, 150, 150))
        for i, (name, pts) in enumerate(series.items()):
            c = colours.get(name, (0, 0, 0))
            xy = [to(x, y) for x, y in pts]
            if len(xy) > 1:
                d.line(xy, fill=c, width=2)
            for x, y in xy:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=c)
            parts = []
            for wname, w in sync[name].get("windows", {}).items():
                o = w["offsets_ms"]
                if o.get("n"):
                    parts.append(f"{wname} p50 {o['p50']:+.1f} spread {o['p90'] - o['p10']:.1f}")
            d.rectangle((W - 560, 70 + i * 20, W - 548, 82 + i * 20), fill=c)
            d.text((W - 540, 70 + i * 20), f"{name}: " + "; ".join(parts), fill="black")

    # 2. fps while speaking
    speaking = results.get("speaking", {}).get("fps_series") or []
    if speaking:
        to = axes((110, 460, 560, 780), (0, len(speaking)), (0, 30), "received fps, one page, continuous speech",
                  "seconds", "fps", range(0, 31, 5), nice_ticks(len(speaking)))
        xy = [to(i + 1, f or 0) for i, f in enumerate(speaking)]
        if len(xy) > 1:
            d.line(xy, fill=(31, 119, 180), width=2)

    # 3. capacity
    rows = results.get("capacity") or []
    if rows:
        n = len(rows)
        to = axes((680, 460, W - 40, 780), (0.5, n + 0.5), (0, 30), "received fps per speaking-session count",
                  "concurrent speaking sessions", "fps", range(0, 31, 5), [])
        for r in rows:
            xa, _ = to(r["sessions"] - 0.3, 0)
            xb, _ = to(r["sessions"] + 0.3, 0)
            _, ymin = to(0, r["fps_min"])
            _, ymean = to(0, r["fps_mean"])
            _, ybase = to(0, 0)
            d.rectangle((xa, ymean, xb, ybase), fill=(160, 200, 235))
            d.line((xa, ymin, xb, ymin), fill=(214, 39, 40), width=3)
            d.text((xa, ymean - 30), f"{r['server_underrun_share']:.0%} und.", fill="black")
            d.text(((xa + xb) / 2 - 4, ybase + 5), str(r["sessions"]), fill="black")
        d.text((690, 832), "bar: mean fps; red: slowest page; 'und.': speech ticks the renderer missed", fill="black")

    # 4. voice-to-voice latency per stage, one bar per question
    v2v = results.get("v2v") or {}
    stages = [st for st in v2v.get("server_stages_ms") or [] if st.get("end_of_turn_wait") is not None]
    if stages:
        page_ms = [t["latencyMs"] for t in v2v.get("turns", [])]
        parts = [("end_of_turn_wait", "end-of-turn wait", (158, 202, 225)), ("asr", "ASR", (49, 130, 189)),
                 ("llm_first_clause", "LLM first clause", (253, 174, 107)),
                 ("tts_first_audio", "TTS first audio", (116, 196, 118)), ("first_frame", "first frame", (188, 189, 220))]
        totals = [sum(st.get(k) or 0 for k, _, _ in parts) for st in stages] + page_ms
        xmax = max(500, math.ceil(max(totals) / 500) * 500)
        n = len(stages)
        to = axes((110, 900, W - 40, 1180), (0, xmax), (0, n), "voice-to-voice per question: server stages "
                  "(bars) and the page's end of speech -> first avatar audio (black tick)",
                  "ms", "question", [], range(0, xmax + 1, 250 if xmax <= 2500 else 500))
        row = (1180 - 900) / n
        for i, st in enumerate(stages):
            x = 0.0
            y0, y1 = 900 + i * row + row * 0.15, 900 + (i + 1) * row - row * 0.15
            for key, _, colour in parts:
                w = st.get(key) or 0.0
                d.rectangle((to(x, 0)[0], y0, to(x + w, 0)[0], y1), fill=colour)
                x += w
            if i < len(page_ms):
                px = to(page_ms[i], 0)[0]
                d.line((px, y0 - 3, px, y1 + 3), fill="black", width=3)
            d.text((70, (y0 + y1) / 2 - 8), str(i + 1), fill="black")
        for j, (_, label, colour) in enumerate(parts):
            d.rectangle((120 + j * 200, 1215, 132 + j * 200, 1227), fill=colour)
            d.text((138 + j * 200, 1213), label, fill="black")
    img.save(path)


# ---- main ---------------------------------------------------------------------------------


async def run(args) -> dict:
    from playwright.async_api import async_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    results: dict = {"seconds": args.seconds, "machine": {"cpus": os.cpu_count(), "load_before": round(load, 2)},
                     "sync": {}}
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores before the start: "
              "other work on this machine will show up in these figures", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mic = write_wav(Path(tmp) / "silence.wav", np.zeros(RATE // 2, np.int16))
        flags = CHROMIUM_FLAGS + [f"--use-file-for-fake-audio-capture={mic}%noloop"]
        async with async_playwright() as driver:
            if args.v2v_only:
                print(f"Voice-to-voice (listening server, {args.v2v_llm} LLM, {' '.join(args.v2v_server_arg)}):",
                      flush=True)
                results["v2v"] = await measure_v2v(driver, args.questions, args.v2v_llm, tuple(args.v2v_server_arg),
                                                   args.v2v_server_script)
                return results
            browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=flags)
            results["machine"]["chromium"] = browser.version
            server = ServerProcess("media", ["--listen", "false", "--max-sessions", str(max(4, args.max_pages + 1))])
            print("starting the server (models load first) ...", flush=True)
            await server.start()
            try:
                where = "pages in this browser" if args.load_pages else "light aiortc viewers"
                print(f"A/V offset: one sync-test page per sender, {args.sync_warmup:.0f} s warm-up, then "
                      f"{args.seconds / 2:.0f} s alone, {args.seconds:.0f} s while 2 other sessions on the server "
                      f"speak ({where}), {args.seconds / 2:.0f} s alone again:", flush=True)
                size = (512, 512)
                probe = await open_page(browser, server.url, "stats=1")
                await asyncio.sleep(2.5)
                st = await probe.js("() => window.avatarClient.stats")
                if st.get("frameWidth"):
                    size = (st["frameWidth"], st["frameHeight"])
                await probe.close()

                # alone, loaded, alone: a slow drift of the page's offset cancels out of the comparison
                windows = [("alone", args.seconds / 2, None),
                           ("loaded", args.seconds, lambda: speaking_load(server.url, browser, args.load_pages)),
                           ("alone", args.seconds / 2, None)]
                base_url, stop_baseline = await start_baseline_server(*size)
                try:
                    results["sync"]["baseline"] = await measure_sync(
                        browser, base_url, f"baseline (minimal aiortc sender, {size[0]}x{size[1]})",
                        args.sync_warmup, windows)
                finally:
                    await stop_baseline()
                results["sync"]["server"] = await measure_sync(browser, server.url, "server", args.sync_warmup,
                                                               windows)
                summarize_sync(results["sync"])

                print(f"Continuous speaking, {args.seconds:.0f} s:", flush=True)
                results["speaking"] = await measure_speaking(browser, server.url, args.seconds)

                if args.max_pages > 0:
                    print("Concurrent speaking sessions:", flush=True)
                    results["capacity"] = await measure_capacity(browser, server.url, args.max_pages,
                                                                 max(8.0, args.seconds / 4))
                    ok = [r["sessions"] for r in results["capacity"] if "limit" not in r]
                    results["max_sessions_at_25fps"] = max(ok) if ok else 0
                    print(f"  -> {results['max_sessions_at_25fps']} concurrent speaking session(s) hold 25 fps "
                          f"with the browser on the same {os.cpu_count()} cores", flush=True)
            finally:
                server.stop()
                await browser.close()

            results["machine"]["load_after_media"] = round(os.getloadavg()[0], 2)
            if not args.skip_v2v:
                print(f"Voice-to-voice (listening server, {args.v2v_llm} LLM):", flush=True)
                try:
                    results["v2v"] = await measure_v2v(driver, args.questions, args.v2v_llm,
                                                       tuple(args.v2v_server_arg), args.v2v_server_script)
                except Exception as exc:  # the listening models may be missing; the rest still counts
                    print(f"  skipped: {exc}", flush=True)
                    results["v2v"] = {"error": str(exc)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each measurement window (default 60)")
    parser.add_argument("--sync-warmup", type=float, default=SYNC_WARMUP_S,
                        help=f"seconds a sync-test page runs before its windows (default {SYNC_WARMUP_S:.0f})")
    parser.add_argument("--max-pages", type=int, default=6, help="most concurrent sessions to try (0 skips)")
    parser.add_argument("--skip-v2v", action="store_true", help="skip the voice-to-voice run (needs ASR/VAD models)")
    parser.add_argument("--load-pages", action="store_true",
                        help="open the loaded run's 2 speaking sessions as pages in the same Chromium (its decoding then "
                             "competes with the measured page on this machine) instead of light aiortc viewers")
    parser.add_argument("--questions", type=int, default=10, help="spoken questions in the voice-to-voice run")
    parser.add_argument("--v2v-llm", choices=["local", "echo"], default="local",
                        help="reply model of the voice-to-voice server (default: the embedded one)")
    parser.add_argument("--v2v-only", action="store_true", help="only the voice-to-voice run")
    parser.add_argument("--v2v-server-arg", action="append", default=[],
                        help="extra run.py argument for the voice-to-voice server (repeatable), e.g. "
                             "--v2v-server-arg=--turn-detector=silence")
    parser.add_argument("--v2v-server-script", type=Path, default=None,
                        help="run.py of another checkout for the voice-to-voice server (a before/after comparison)")
    parser.add_argument("--out", type=Path, default=OUT / "browser.json")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit("needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium")
    results = asyncio.run(run(args))
    OUT.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.v2v_only:
        print(f"wrote {args.out}")
        return
    plot(results, OUT / "browser.png")
    print(f"wrote {args.out} and {OUT / 'browser.png'}")


if __name__ == "__main__":
    main()
