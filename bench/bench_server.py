"""Media-core figures of the server, measured on this machine.

    python bench/bench_server.py                  # everything (~10-25 min: it waits for a quiet box)
    python bench/bench_server.py --quick          # shorter windows, fewer utterances
    python bench/bench_server.py --only say       # one of: render, idle, say, breakdown, jitter, sessions
    python bench/bench_server.py --decode         # clients decode video too (costs the box CPU)
    python bench/bench_server.py --only sessions --server-env OMP_NUM_THREADS=1   # one torch thread

1. render:   PhotoWarpRenderer frames/s on one core (torch 1 thread; then also pinned to CPU 0),
             FrameSources of real Piper speech, rendered in the server's batches (RENDER_BATCH).
2. idle:     CPU of one streaming session, the server alone in its own process (run.py), read
             from /proc/PID/stat: idle, and speaking continuously.
3. say:      POST /say -> first speech frame on the wire, at the client (same machine, same
             CLOCK_MONOTONIC), for one-sentence texts; plus the server's speech_start event.
3b. breakdown: the same loop against a server in this process whose voice, renderer and
             clock callback are wrapped with timers: where those milliseconds go.
4. sessions: how many concurrent sessions hold 25 fps, speaking continuously and idle.
5. jitter: packet arrival jitter of one idle session, alone and while 2 other sessions speak.

The clients are real aiortc peers (tests/rtc_client.py) in this process. By default their
video is received, reassembled and timed but not decoded (bench/common.py LightClient), so
the clients' VP8 decoding does not take CPU from the server on the same two cores; audio
is decoded. Every figure says how it was measured; all of them go to bench/out/server.json
(merged with what earlier runs wrote there, so --only runs add up).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import OUT, CpuShare, CpuWindow, LightClient, ServerProcess, load_average, wait_quiet  # noqa: E402

FPS = 25
SAMPLES_PER_TICK = 48_000 // FPS
AUDIBLE_PEAK = 328       # -40 dBFS
TARGET_RENDER_FPS = 200
TARGET_IDLE_CPU = 15.0
TARGET_SAY_MS = 150.0
HOLD_FPS = 24.5

SENTENCES = [
    "The weather is lovely this morning.",
    "Please close the door behind you.",
    "I will call you back in ten minutes.",
    "Thanks for waiting so patiently today.",
    "Your package should arrive on Friday afternoon.",
    "Let me check that for you right away.",
    "The museum opens at nine every weekday.",
    "We could meet near the station instead.",
    "My favourite colour has always been green.",
    "Turn left after the second traffic light.",
]

LONG_TEXTS = [
    "Good afternoon, and welcome to the tour. Today we walk through the old harbour district, "
    "where fishing boats have landed their catch for more than three hundred years. On your left "
    "you can see the customs house, built of grey stone after the great fire. Its clock tower still "
    "keeps time for the whole quarter, and every evening at six a bell reminds the sailors that the "
    "market is about to close. Further along the quay the warehouses have become small workshops, "
    "bakeries and a school for boat builders. If you are hungry, the soup at the corner cafe is "
    "famous, and nobody has ever left it still hungry. Please stay close to the group as we cross "
    "the bridge, because the pavement is narrow and the cyclists are fast.",
    "Here is a short summary of your account. Your last payment arrived on the fourth of the month "
    "and was applied to the balance the same day. There are no open invoices at the moment. Your "
    "plan renews automatically at the end of next month, and the price stays the same as this year. "
    "If you would like to change the delivery address, open the settings page and choose the profile "
    "tab. You can also add a second contact person who will receive copies of every message. Should "
    "you have any further questions, simply ask, and I will do my best to answer them right away. "
    "Thank you for being a customer for so many years; it is a pleasure to help you.",
    "Let us go through the recipe step by step. First, warm the oven to two hundred degrees and "
    "line a tray with baking paper. Chop two onions, three carrots and a handful of mushrooms into "
    "small pieces. Fry the onions slowly in a little olive oil until they turn soft and golden, then "
    "add the carrots and the mushrooms and stir for five more minutes. Season with salt, pepper and "
    "a pinch of dried thyme. Spread the vegetables on the tray, pour a cup of cream over them and "
    "cover everything with grated cheese. Bake for twenty minutes, until the top is brown and "
    "bubbling. Let it rest for a moment before serving, because it will be very hot.",
]


class QuietGate:
    """Before each timed window, wait (within a total budget) for other jobs on the box to calm down."""

    def __init__(self, max_others_pct: float, budget_s: float) -> None:
        self.max_others_pct = max_others_pct
        self.budget_s = budget_s
        self.waited_s = 0.0

    async def __call__(self, server_pid: int | None) -> float:
        start = time.monotonic()
        timeout = max(0.0, min(120.0, self.budget_s - self.waited_s))
        others = await wait_quiet(server_pid, self.max_others_pct, timeout)
        self.waited_s += time.monotonic() - start
        return others

    def busy(self, others_pct: float) -> str:
        """A marker for figures taken while other processes used the cores."""
        return f"  [CONTENDED: other processes used {others_pct:.0f} % of a core]" \
            if others_pct > self.max_others_pct else ""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 78 - len(title)), flush=True)


# ---- 1. renderer frames/s on one core --------------------------------------------------------


def bench_render(quick: bool, gate: QuietGate) -> dict:
    import torch

    from models.bundle import build_renderer
    from models.tts import PiperTTS
    from rtc_server.config import Config
    from rtc_server.speaker import RENDER_BATCH

    section("1. renderer frames/s on one core (default PhotoWarpRenderer, default avatar)")
    torch.set_num_threads(1)
    config = Config(listen=False)
    renderer = build_renderer(config, "cpu")
    tts = PiperTTS(sample_rate=config.sample_rate, intra_op_threads=1)
    chunks = [chunk for text in LONG_TEXTS[:2] for chunk in tts.synthesize(text)]
    speech_s = sum(c.duration for c in chunks)
    min_frames = 200
    min_seconds = 2.0 if quick else 5.0
    print(f"avatar {config.avatar} {renderer.width}x{renderer.height} (warped crop {renderer.crop.width}x"
          f"{renderer.crop.height}); {len(chunks)} Piper chunks, {speech_s:.1f} s of speech; "
          f"batches of {RENDER_BATCH} (rtc_server.speaker.RENDER_BATCH); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread")

    def run() -> dict:
        # warm-up: one batch (first calls allocate)
        renderer.begin(chunks[0], 0).render(0, RENDER_BATCH)
        frames = begins = 0
        render_s = begin_s = 0.0
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        load0 = CpuWindow(None)
        while frames < min_frames or time.perf_counter() - wall0 < min_seconds:
            for chunk in chunks:
                t = time.perf_counter()
                source = renderer.begin(chunk, 0)
                begin_s += time.perf_counter() - t
                begins += 1
                for start in range(0, source.n_frames, RENDER_BATCH):
                    count = min(RENDER_BATCH, source.n_frames - start)
                    t = time.perf_counter()
                    frames += len(source.render(start, count))
                    render_s += time.perf_counter() - t
        wall = time.perf_counter() - wall0
        cpu = time.thread_time() - cpu0
        machine = load0.share()
        return {
            "frames": frames,
            "fps_render": frames / render_s,
            "fps_with_begin": frames / (render_s + begin_s),
            "fps_per_cpu_second": frames / cpu,
            "ms_per_frame": 1000 * render_s / frames,
            "begin_ms_per_chunk": 1000 * begin_s / begins,
            "cpu_over_wall": cpu / wall,
            "machine_busy_pct": machine.machine_pct,
        }

    results = {}
    old_affinity = os.sched_getaffinity(0)
    for label, cpus in (("one_thread", None), ("pinned_cpu0", {0})):
        asyncio.run(gate(None))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        try:
            r = run()
        finally:
            os.sched_setaffinity(0, old_affinity)
        results[label] = r
        verdict = "meets" if r["fps_render"] >= TARGET_RENDER_FPS else "MISSES"
        print(f"{label:>12}: {r['fps_render']:.0f} frames/s ({r['ms_per_frame']:.2f} ms/frame) over {r['frames']} "
              f"frames -> {verdict} the {TARGET_RENDER_FPS} target; with begin() per chunk "
              f"{r['fps_with_begin']:.0f} frames/s (begin {r['begin_ms_per_chunk']:.1f} ms/chunk); "
              f"per CPU-second {r['fps_per_cpu_second']:.0f} (this thread got {100 * r['cpu_over_wall']:.0f} % "
              f"of the wall time; machine busy {r['machine_busy_pct']:.0f} % of one core)"
              f"{gate.busy(r['machine_busy_pct'] - 100 * r['cpu_over_wall'])}")
    print("how: wall time of FrameSource.render(start, 4) calls only (begin() timed separately), the exact "
          "path Speaker takes; 'per CPU-second' divides by this thread's CPU time instead, which other "
          "processes on the box cannot lower.")
    results.update(avatar=config.avatar, width=renderer.width, height=renderer.height, batch=RENDER_BATCH,
                   target_fps=TARGET_RENDER_FPS)
    return results


# ---- clients ---------------------------------------------------------------------------------


async def connect(url: str, decode: bool) -> LightClient:
    client = LightClient(url, decode_video=decode)
    await client.connect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(client.received.wire["video"]) > 5 and len(client.received.audio_times) > 10:
            return client
        await asyncio.sleep(0.05)
    await client.close()
    raise TimeoutError("media did not start flowing within 30 s")


async def close_all(clients: list[LightClient]) -> None:
    for c in clients:
        try:
            await c.request("DELETE", f"/sessions/{c.session_id}")
        except Exception:  # the session may already be gone; closing the peer is what matters
            pass
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def is_event(kind: str, uid: str):
    return lambda e: e.get("type") == kind and e.get("utterance_id") == uid


async def keep_talking(client: LightClient, started: asyncio.Event, offset: int = 0) -> None:
    """Say long texts back to back: one utterance on air, the next one already posted."""
    i = offset
    while True:
        uid = await client.say(LONG_TEXTS[i % len(LONG_TEXTS)])
        i += 1
        await client.wait_event(
            lambda e, u=uid: e.get("utterance_id") == u and e.get("type") in ("speech_start", "speech_end"),
            timeout=120)
        started.set()


async def stop_talking(clients: list[LightClient], talkers: list[asyncio.Task]) -> None:
    for t in talkers:
        t.cancel()
    await asyncio.gather(*talkers, return_exceptions=True)
    for c in clients:
        try:
            await c.request("POST", f"/sessions/{c.session_id}/interrupt")
        except Exception:
            pass


async def stats(client: LightClient) -> dict:
    status, body = await client.request("GET", f"/sessions/{client.session_id}")
    if status != 200 or body is None:
        raise RuntimeError(f"GET /sessions/{client.session_id} answered {status}: {body}")
    return body["stats"]


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after if isinstance(after[k], (int, float)) and k in before}


# ---- 2. CPU of one session --------------------------------------------------------------------


async def cpu_window(server: ServerProcess, client: LightClient, window: float,
                     gate: QuietGate) -> tuple[CpuShare, dict, float]:
    """Once the box is quiet: the server's CPU share over `window` s, the session's stats
    deltas and the video kbit/s the client received meanwhile."""
    await gate(server.pid)
    s0, b0 = await stats(client), client.wire_bytes["video"]
    w = CpuWindow(server.pid)
    await asyncio.sleep(window)
    share = w.share()
    d = delta(await stats(client), s0)
    return share, d, (client.wire_bytes["video"] - b0) * 8 / 1000 / share.seconds


async def bench_idle(server: ServerProcess, quick: bool, decode: bool, gate: QuietGate) -> dict:
    section("2. CPU of one streaming session (server alone in its own process)")
    window = 8.0 if quick else 20.0
    warm = 3.0
    out: dict = {"window_s": window, "warmup_s": warm}

    await gate(server.pid)
    w = CpuWindow(server.pid)
    await asyncio.sleep(min(5.0, window))
    share = w.share()
    out["no_session"] = vars(share)
    print(f"no session:       {share.describe()}{gate.busy(share.others_pct)}")

    client = await connect(server.url, decode)
    try:
        await asyncio.sleep(warm)
        # Two back-to-back windows: right after connecting (as a page that just opened), and
        # later, once the receiver's bandwidth estimate has raised the VP8 bitrate (~20 s).
        for key, label in (("idle", "1 idle session:  "), ("idle_steady", "  same, later:   ")):
            share, d, kbps = await cpu_window(server, client, window, gate)
            out[key] = {**vars(share), "stream": d, "video_kbps": kbps}
            verdict = "meets" if share.server_pct < TARGET_IDLE_CPU else "MISSES"
            print(f"{label} {share.describe()}  -> {verdict} the < {TARGET_IDLE_CPU:.0f} % target"
                  f"{gate.busy(share.others_pct)}")
            print(f"                  video {kbps:.0f} kbit/s on the wire, ticks {d['ticks']}, video sent "
                  f"{d['video_sent']}, late {d['late_ticks']}")

        started = asyncio.Event()
        talker = asyncio.create_task(keep_talking(client, started))
        try:
            await asyncio.wait_for(started.wait(), 60)
            await asyncio.sleep(warm)
            share, d, kbps = await cpu_window(server, client, window, gate)
        finally:
            await stop_talking([client], [talker])
        out["speaking"] = {**vars(share), "stream": d, "video_kbps": kbps}
        print(f"1 speaking sess.: {share.describe()}{gate.busy(share.others_pct)}")
        print(f"                  video {kbps:.0f} kbit/s, speech frames {d['speech_frames']}/{d['ticks']} ticks, "
              f"underruns {d['underruns']}, late {d['late_ticks']}")
    finally:
        await close_all([client])
    print(f"how: utime+stime of the run.py process from /proc/{server.pid}/stat over {window:.0f} s windows, the "
          f"first after {warm:.0f} s of streaming; video kbit/s = RTP payload bytes at the client; one aiortc "
          f"client in this process ({'decoding' if decode else 'not decoding'} video); speaking = /say of long texts back to back (Piper + render + VP8/Opus encode).")
    out["target_pct"] = TARGET_IDLE_CPU
    return out


# ---- 3. /say -> first speech frame on the wire -------------------------------------------------


def first_speech(client: LightClient, t0: float, floor: int) -> dict:
    """Wire arrival of the first speech audio after t0: any sample above the idle floor, and audible.

    Idle ticks carry digital silence, which Opus decodes to exact zeros (the floor, measured
    before each /say, says so), while Piper's leading near-silence is not zero: the first
    packet above the floor belongs to the utterance's first tick. Both 20 ms packets of a
    tick leave together, so that packet's arrival is the first speech frame's arrival.
    """
    r = client.received
    frame = audible = None
    for i in np.argsort(r.audio_pts):
        wire = r.wire_time("audio", r.audio_pts[i])
        if wire is None or wire < t0:
            continue
        peak = int(np.abs(r.audio_chunks[i].astype(np.int32)).max())
        if frame is None and peak > floor:
            frame = wire
        if peak > AUDIBLE_PEAK:
            audible = wire
            break
    if frame is None or audible is None:
        return {}
    return {"frame_wire": frame, "audible_wire": audible}


def noise_floor(client: LightClient, t_from: float, t_to: float) -> int:
    """Largest decoded sample of the packets that arrived in [t_from, t_to] (idle: 0)."""
    r = client.received
    peaks = [int(np.abs(c.astype(np.int32)).max()) for t, c in zip(r.audio_times, r.audio_chunks)
             if t_from <= t <= t_to]
    return max(peaks, default=0)


def tts_first_chunk_ms(texts: list[str]) -> list[float]:
    from models.tts import PiperTTS

    tts = PiperTTS(sample_rate=48_000, intra_op_threads=1)  # as models.bundle does on <= 2 cores
    tts.warmup()
    times = []
    for text in texts:
        t = time.perf_counter()
        next(iter(tts.synthesize(text)))
        times.append(1000 * (time.perf_counter() - t))
    return times


async def bench_say(server: ServerProcess, quick: bool, decode: bool, gate: QuietGate) -> dict:
    section("3. POST /say -> first speech frame on the wire (one-sentence texts)")
    texts = SENTENCES[:5] if quick else SENTENCES
    client = await connect(server.url, decode)
    rows = []
    floors = []
    try:
        await asyncio.sleep(2.0)
        rng = random.Random(7)
        for text in texts:
            others = await gate(server.pid)
            await asyncio.sleep(0.3 + rng.random() * 0.4)  # land on a random phase of the tick
            floor = noise_floor(client, time.monotonic() - 0.3, time.monotonic())
            floors.append(floor)
            t0 = time.monotonic()
            uid = await client.say(text)
            t_http = time.monotonic()
            start = await client.wait_event(is_event("speech_start", uid), timeout=30)
            t_event = next(t for t, e in reversed(client.events) if e is start)
            await client.wait_event(is_event("speech_end", uid), timeout=30)
            await asyncio.sleep(0.2)
            found = first_speech(client, t0, floor)
            if not found:
                print(f"  (no speech audio found for {text!r})")
                continue
            row = {"text": text, "words": len(text.split()),
                   "frame_ms": 1000 * (found["frame_wire"] - t0),
                   "audible_ms": 1000 * (found["audible_wire"] - t0),
                   "event_ms": 1000 * (t_event - t0), "http_ms": 1000 * (t_http - t0), "others_pct": others}
            rows.append(row)
            print(f"  {row['frame_ms']:6.0f} ms frame  {row['audible_ms']:6.0f} ms audible  "
                  f"{row['event_ms']:6.0f} ms speech_start  ({row['http_ms']:.0f} ms HTTP)  {text}{gate.busy(others)}")
    finally:
        await close_all([client])

    tts_ms = tts_first_chunk_ms(texts)
    out: dict = {"n": len(rows), "rows": rows, "idle_audio_peak_max": max(floors, default=0),
                 "tts_alone_ms": tts_ms, "target_ms": TARGET_SAY_MS}
    for key in ("frame_ms", "audible_ms", "event_ms"):
        values = [r[key] for r in rows]
        out[key] = {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=float("nan"))}
    f, a, e = out["frame_ms"], out["audible_ms"], out["event_ms"]
    verdict = "meets" if f["p50"] < TARGET_SAY_MS else "MISSES"
    print(f"first speech frame on the wire:  p50 {f['p50']:.0f} ms, p95 {f['p95']:.0f} ms, max {f['max']:.0f} ms "
          f"(n={len(rows)}) -> {verdict} the < {TARGET_SAY_MS:.0f} ms target")
    print(f"first audible audio (-40 dBFS):  p50 {a['p50']:.0f} ms, p95 {a['p95']:.0f} ms, max {a['max']:.0f} ms")
    print(f"server's speech_start event:     p50 {e['p50']:.0f} ms, p95 {e['p95']:.0f} ms, max {e['max']:.0f} ms "
          "(data-channel arrival at the client)")
    print(f"Piper alone, first chunk of the same texts (this process, 1 thread, server idle): "
          f"p50 {percentile(tts_ms, 50):.0f} ms, max {max(tts_ms):.0f} ms")
    gaps = [r["frame_ms"] - r["event_ms"] for r in rows]
    out["frame_minus_event_ms"] = {"p50": percentile(gaps, 50), "min": min(gaps, default=float("nan")),
                                   "max": max(gaps, default=float("nan"))}
    print(f"first speech frame minus speech_start arrival: p50 {percentile(gaps, 50):.0f} ms, min "
          f"{min(gaps, default=float('nan')):.0f}, max {max(gaps, default=float('nan')):.0f} (the event leaves on "
          "the data channel as the tick is emitted; the frame is encoded first)")
    print("how: t0 = time.monotonic() in this process just before POST /say; the first speech frame is the first "
          f"audio packet after t0 with any sample above the idle floor (idle decodes to peak {out['idle_audio_peak_max']}"
          "), timed by its first RTP packet's arrival (received.wire, before the jitter buffer). It includes: the HTTP "
          "request, Piper synthesizing the opening phrase (--lead-words, 3 words by default), renderer.begin + "
          "the first frame (executor threads), waiting for the next clock tick (0-40 ms), the tick's yuv->VideoFrame and Opus "
          "encode, SRTP and loopback UDP. 'Audible' adds Piper's soft onset (its leading BOS phoneme lasts ~35-60 ms).")
    return out


# ---- 3b. where the /say latency goes (in-process, instrumented) --------------------------------


class _Marks(dict):
    """First time (monotonic) each stage of the current utterance happened."""

    def mark(self, name: str) -> None:
        self.setdefault(name, time.monotonic())


class _TimedVoice:
    """Wraps the server's voice: notes when synthesis starts and yields its first chunk."""

    def __init__(self, voice, marks: _Marks) -> None:
        self.voice, self.marks = voice, marks

    def __getattr__(self, name: str):
        return getattr(self.voice, name)

    def synthesize(self, text: str):
        self.marks.mark("tts_start")
        for chunk in self.voice.synthesize(text):
            self.marks.mark("tts_chunk")
            yield chunk


class _TimedSource:
    def __init__(self, source, marks: _Marks) -> None:
        self.source, self.marks, self.n_frames = source, marks, source.n_frames

    def render(self, start: int, count: int):
        self.marks.mark("batch_start")
        frames = self.source.render(start, count)
        self.marks.mark("batch_end")
        return frames


class _TimedRenderer:
    """Wraps the server's renderer: notes begin() and the first render batch."""

    def __init__(self, renderer, marks: _Marks) -> None:
        self.renderer, self.marks = renderer, marks

    def __getattr__(self, name: str):
        return getattr(self.renderer, name)

    def begin(self, speech, tick: int):
        self.marks.mark("begin_start")
        source = self.renderer.begin(speech, tick)
        self.marks.mark("begin_end")
        return _TimedSource(source, self.marks)


async def bench_breakdown(quick: bool, gate: QuietGate) -> dict:
    """The same /say loop against an in-process server whose voice/renderer/clock are timed."""
    from models.bundle import load_models
    from rtc_server.app import SESSIONS
    from rtc_server.config import Config
    from tests.conftest import start_server

    section("3b. where /say -> first frame goes (server in this process, stages timed by wrappers)")
    config = Config(port=0, listen=False, max_sessions=2, sessions_per_min=0)
    bundle = load_models(config, progress=lambda msg: None)
    marks = _Marks()
    bundle.tts = _TimedVoice(bundle.tts, marks)
    bundle.renderers = {k: _TimedRenderer(r, marks) for k, r in bundle.renderers.items()}
    base_url, app, server = await start_server(config, bundle, conversation=False)
    client = None
    rows = []
    try:
        client = await connect(base_url, decode=False)
        session = app[SESSIONS][client.session_id]
        on_speech = session.stream.on_speech

        def timed_on_speech(event: str, uid: str) -> None:
            if event == "start":
                marks.mark("emit")
            on_speech(event, uid)

        session.stream.on_speech = timed_on_speech
        await asyncio.sleep(2.0)
        rng = random.Random(11)
        for text in SENTENCES[:5] if quick else SENTENCES:
            await gate(None)
            await asyncio.sleep(0.3 + rng.random() * 0.4)
            marks.clear()
            t0 = time.monotonic()
            uid = await client.say(text)
            await client.wait_event(is_event("speech_end", uid), timeout=30)
            await asyncio.sleep(0.2)
            found = first_speech(client, t0, noise_floor(client, t0 - 0.3, t0))
            if not found or len(marks) < 7:
                continue
            m = {k: 1000 * (v - t0) for k, v in marks.items()}
            m["wire"] = 1000 * (found["frame_wire"] - t0)
            rows.append(m)
    finally:
        if client is not None:
            await close_all([client])
        await server.close()
    stages = [("POST -> TTS starts", None, "tts_start"), ("TTS first chunk", "tts_start", "tts_chunk"),
              ("hand-off to render", "tts_chunk", "begin_start"), ("renderer.begin", "begin_start", "begin_end"),
              ("hand-off", "begin_end", "batch_start"), ("first render batch", "batch_start", "batch_end"),
              ("queue -> tick emits", "batch_end", "emit"), ("encode + send + loopback", "emit", "wire")]
    out: dict = {"n": len(rows), "stages_ms": {}}
    for name, a, b in stages:
        values = [r[b] - (r[a] if a else 0.0) for r in rows]
        out["stages_ms"][name] = {"p50": percentile(values, 50), "max": max(values, default=float("nan"))}
        print(f"  {name:<26} p50 {percentile(values, 50):6.1f} ms   max {max(values, default=float('nan')):6.1f} ms")
    total = [r["wire"] for r in rows]
    out["total_ms"] = {"p50": percentile(total, 50), "max": max(total, default=float("nan"))}
    print(f"  {'total (wire - t0)':<26} p50 {percentile(total, 50):6.1f} ms   max {max(total, default=float('nan')):6.1f} ms"
          f"   (n={len(rows)}; server and client share this process's event loop here)")
    return out


# ---- 4. sessions that hold 25 fps --------------------------------------------------------------


async def measure_sessions(server: ServerProcess, n: int, speaking: bool, window: float,
                           decode: bool, gate: QuietGate) -> dict:
    clients: list[LightClient] = []
    talkers: list[asyncio.Task] = []
    try:
        for _ in range(n):
            clients.append(await connect(server.url, decode))
        if speaking:
            events = [asyncio.Event() for _ in clients]
            talkers = [asyncio.create_task(keep_talking(c, ev, offset=i))
                       for i, (c, ev) in enumerate(zip(clients, events))]
            await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in events)), 120)
        await asyncio.sleep(3.0)
        await gate(server.pid)
        before = [await stats(c) for c in clients]
        cpu = CpuWindow(server.pid)
        w0 = time.monotonic()
        await asyncio.sleep(window)
        w1 = time.monotonic()
        share = cpu.share()
        after = [await stats(c) for c in clients]
    finally:
        await stop_talking(clients, talkers)
        await close_all(clients)
    sessions = []
    for c, b, a in zip(clients, before, after):
        d = delta(a, b)
        wire = sum(1 for t in c.video_wire_times() if w0 <= t < w1)
        complete = sum(1 for t in c.complete_video if w0 <= t < w1) if not decode else \
            sum(1 for t in c.received.video_times if w0 <= t < w1)
        ticks = max(1, d["ticks"])
        sessions.append({
            "fps_wire": wire / (w1 - w0), "fps_complete": complete / (w1 - w0),
            "underruns": d["underruns"], "late_ticks": d["late_ticks"], "skipped_ticks": d["skipped_ticks"],
            "video_dropped": d["video_dropped"], "speech_share": d["speech_frames"] / ticks, "ticks": d["ticks"],
            # Speaking pictures repeated because the renderer could not draw them in time (a still mouth).
            "repeated_share": d.get("repeated_frames", 0) / max(1, d["speech_frames"]),
        })
    allowed_underruns = max(2, round(0.01 * window * FPS))
    holds = all(s["fps_wire"] >= HOLD_FPS and s["underruns"] <= allowed_underruns and s["skipped_ticks"] == 0
                for s in sessions)
    if speaking:
        holds = holds and all(s["speech_share"] > 0.5 for s in sessions)
    return {"n": n, "holds": holds, "sessions": sessions, "cpu": vars(share),
            "allowed_underruns": allowed_underruns}


def print_step(step: dict, gate: QuietGate, note: str = "") -> None:
    ss, cpu = step["sessions"], step["cpu"]
    fps = [s["fps_wire"] for s in ss]
    print(f"  {step['n']:2d} sessions: fps min {min(fps):5.2f} mean {statistics.mean(fps):5.2f} | underruns max "
          f"{max(s['underruns'] for s in ss):3d} | late ticks max {max(s['late_ticks'] for s in ss):3d} | "
          f"sender drops max {max(s['video_dropped'] for s in ss):3d} | repeated pictures max "
          f"{100 * max(s['repeated_share'] for s in ss):3.0f}% | speech "
          f"{100 * min(s['speech_share'] for s in ss):3.0f}% | server CPU {cpu['server_pct']:5.1f} %, "
          f"clients {cpu['bench_pct']:5.1f} %, rest {cpu['others_pct']:5.1f} % "
          f"-> {'holds' if step['holds'] else 'FAILS'}{gate.busy(cpu['others_pct'])}{note}")


async def bench_sessions(server: ServerProcess, quick: bool, decode: bool, counts: list[int],
                         gate: QuietGate, modes: list[str]) -> dict:
    window = 6.0 if quick else 15.0
    out: dict = {"window_s": window, "counts": counts, "decode_video": decode}
    for label in modes:
        speaking = label == "speaking"
        section(f"4. sessions holding 25 fps ({label})")
        steps = []
        best = 0
        for n in counts:
            if not await server.wait_sessions(0, 30):
                print("  (previous sessions did not close within 30 s; stopping)")
                break
            try:
                step = await measure_sessions(server, n, speaking, window, decode, gate)
                if not step["holds"] and step["cpu"]["others_pct"] > gate.max_others_pct:
                    print_step(step, gate, "  (other processes were busy; trying once more)")
                    await server.wait_sessions(0, 30)
                    step = await measure_sessions(server, n, speaking, window, decode, gate)
            except (TimeoutError, asyncio.TimeoutError, RuntimeError) as exc:
                print(f"  {n:2d} sessions: could not run ({exc}); counted as failing")
                steps.append({"n": n, "holds": False, "error": str(exc)})
                break
            steps.append(step)
            print_step(step, gate)
            if not step["holds"]:
                break
            best = n
        per_session = [st["cpu"]["server_pct"] / st["n"] for st in steps if "cpu" in st and st["holds"]]
        estimate = int(200 // max(per_session)) if per_session else None
        out[label] = {"largest_passing": best, "steps": steps,
                      "server_cpu_pct_per_session": max(per_session, default=None),
                      "cpu_bound_estimate": estimate}
        print(f"largest count holding 25 fps ({label}): {best}")
        if per_session:
            print(f"server CPU per {label} session (passing steps, worst): {max(per_session):.1f} % of one core "
                  f"-> CPU-bound estimate for a dedicated 2-core server: ~{estimate} sessions (not measured; "
                  "ignores the single event loop and the 2 executor threads)")
    print(f"how: N aiortc peers in this process ({'decoding' if decode else 'not decoding'} video), each its own "
          f"session on run.py --max-sessions 16; after 3 s (and every session's first speech_start when speaking) "
          f"a {window:.0f} s window: fps = video RTP timestamps whose first packet arrived in it; underruns/late/"
          "skipped ticks are deltas of GET /sessions/{id} stats. Holds = every session >= 24.5 fps, underruns "
          "<= 1 % of the window's ticks (min 2), no skipped ticks, and (speaking) > 50 % of ticks speech. "
          "Stops at the first count that fails.")
    return out


def send_jitter_ms(client: LightClient, since: float) -> dict:
    """Per kind: how much later than its media time each RTP timestamp arrived (relative to the
    earliest), p50/p99/max in ms, for first packets that arrived after `since`."""
    out = {}
    for kind, rate in (("audio", 48_000), ("video", 90_000)):
        seen = [(ts, t) for ts, t in client.received.wire[kind].items() if t >= since]
        if len(seen) < 10:
            continue
        stamps = np.unwrap(np.array([ts for ts, _ in seen], dtype=np.float64), period=2**32)
        late = np.array([t for _, t in seen]) - stamps / rate
        late = list((late - late.min()) * 1000)
        out[kind] = {"n": len(seen), "p50": round(percentile(late, 50), 1), "p99": round(percentile(late, 99), 1),
                     "max": round(max(late), 1)}
    return out


async def bench_jitter(server: ServerProcess, quick: bool, decode: bool, gate: QuietGate) -> dict:
    """Arrival jitter of one idle session's packets, alone and while two other sessions speak."""
    section("5. packet send jitter of one session (arrival minus media time)")
    window = 8.0 if quick else 20.0
    out: dict = {"window_s": window}
    for talking in (0, 2):
        await server.wait_sessions(0, 30)
        others = [await connect(server.url, decode) for _ in range(talking)]
        started = [asyncio.Event() for _ in others]
        talkers = [asyncio.create_task(keep_talking(c, e, i)) for i, (c, e) in enumerate(zip(others, started))]
        watched = await connect(server.url, decode)
        try:
            await asyncio.gather(*(e.wait() for e in started))
            others_pct = await gate(server.pid)
            since = time.monotonic()
            await asyncio.sleep(window)
            result = send_jitter_ms(watched, since)
        finally:
            await stop_talking(others, talkers)
            await close_all(others + [watched])
        label = f"{talking} others speaking" if talking else "alone"
        out[label] = result
        print(f"{label:18s} " + "; ".join(f"{k} p50 {v['p50']:.1f} p99 {v['p99']:.1f} max {v['max']:.1f} ms"
                                          for k, v in result.items()) + gate.busy(others_pct))
    print("how: the watched session is idle; each RTP timestamp's first-packet arrival minus its media time "
          "(timestamp / clock rate), shifted so the earliest is 0: what a browser's jitter buffer must absorb.")
    return out


# ---- main ------------------------------------------------------------------------------------


def write_results(update: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "server.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.update(update)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


async def run_server_benches(args, results: dict, gate: QuietGate) -> None:
    env = dict(item.split("=", 1) for item in args.server_env)
    server = ServerProcess("bench", ["--listen", "false", "--max-sessions", "16"], env=env)
    suffix = "".join(f"_{k}={v}" for k, v in env.items())  # keeps runs with other server settings apart
    try:
        loaded = await server.start()
        extra = " with " + " ".join(f"{k}={v}" for k, v in env.items()) if env else ""
        print(f"\nserver: run.py --listen false --max-sessions 16{extra} on {server.url} (pid {server.pid}), ready in "
              f"{loaded:.1f} s; log {server.log_path.relative_to(ROOT)}")
        if "idle" in args.only:
            results["idle_cpu" + suffix] = await bench_idle(server, args.quick, args.decode, gate)
            write_results(results)
        if "say" in args.only:
            results["say_latency" + suffix] = await bench_say(server, args.quick, args.decode, gate)
            write_results(results)
        if "jitter" in args.only:
            results["send_jitter" + suffix] = await bench_jitter(server, args.quick, args.decode, gate)
            write_results(results)
        if "sessions" in args.only:
            counts = [int(c) for c in args.counts.split(",")]
            results["sessions" + suffix] = await bench_sessions(server, args.quick, args.decode, counts, gate,
                                                                  args.modes.split(","))
            write_results(results)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer utterances")
    parser.add_argument("--only", action="append", choices=["render", "idle", "say", "breakdown", "jitter", "sessions"],
                        help="run only these parts (repeatable); default all")
    parser.add_argument("--decode", action="store_true", help="clients decode the video (default: receive only)")
    parser.add_argument("--quiet-pct", type=float, default=25.0,
                        help="before each window wait until other processes use under this %% of one core")
    parser.add_argument("--quiet-budget", type=float, default=600.0,
                        help="total seconds the run may spend waiting for a quiet machine (0: never wait)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the server process, e.g. OMP_NUM_THREADS=1 (repeatable)")
    parser.add_argument("--modes", default="speaking,idle", help="session modes to scan: speaking, idle or both")
    parser.add_argument("--counts", default="1,2,3,4,6,8,10,12,14,16", help="session counts to try, in order")
    args = parser.parse_args()
    args.only = args.only or ["render", "idle", "say", "breakdown", "jitter", "sessions"]
    gate = QuietGate(args.quiet_pct, args.quiet_budget)

    results: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": load_average(),
                                 "when": time.strftime("%Y-%m-%d %H:%M:%S")}}
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in load_average())} "
          "(other processes on this box share the cores; each window reports what they used)")
    if "render" in args.only:
        results["render"] = bench_render(args.quick, gate)
        write_results(results)
    if set(args.only) & {"idle", "say", "jitter", "sessions"}:
        asyncio.run(run_server_benches(args, results, gate))
    if "breakdown" in args.only:
        results["say_breakdown"] = asyncio.run(bench_breakdown(args.quick, gate))
        write_results(results)
    results["machine"]["loadavg_at_end"] = load_average()
    results["machine"]["waited_for_quiet_s"] = gate.waited_s
    path = write_results(results)
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
