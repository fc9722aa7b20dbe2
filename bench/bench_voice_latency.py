"""Voice-to-voice and barge-in latency, measured at a real WebRTC client.

    python3 bench/bench_voice_latency.py                      # 12 questions, 6 barge-ins, local LLM (~8 min)
    python3 bench/bench_voice_latency.py --quick              # 4 questions, 3 barge-ins
    python3 bench/bench_voice_latency.py --llm echo --end-silence-ms 300
    python3 bench/bench_voice_latency.py --wait-quiet 60      # on a shared box: wait for other jobs

The server runs as a subprocess (bench/common.ServerProcess: `python run.py --port P ...`, log
in bench/out/server-voice.log), so it shares no GIL with the client. The client is
bench/common.LightClient (tests/rtc_client.AvatarClient without video decoding), a real aiortc
peer whose microphone plays espeak-ng speech (a voice unlike the avatar's) in real time. The
machine may be shared: every trial records the cores that other processes used meanwhile.

1. Voice-to-voice: from the end of the user's speech in the mic audio (played_at + offset of
   the question's last non-silent sample) to the first audible avatar audio frame of the
   reply, by the arrival time of its first RTP packet (wire) and by the time the decoded
   frame left aiortc's jitter buffer (decoded).
2. Per-stage breakdown from GET /sessions/{id} `turns[...]`: the server's timestamps are
   time.monotonic() values, the same clock as this process on one Linux host, so the client
   side (uplink, downlink) is measured against them exactly and the stages add up to the
   total with no unexplained rest.
3. Barge-in: the avatar speaks a long /say text, the mic plays a short interjection; from the
   user's speech onset in the mic audio (played_at + offset of its first non-silent sample) to
   the first avatar audio frame (wire arrival) after which only digital silence (idle ticks)
   arrives; also to the speech_end(interrupted) event, which marks the server's decision.

One conversation (session) by default, as a user would have it: its chat history grows with
every question, so later questions also measure how the LLM copes with a longer prompt.

Prints a table and writes bench/out/voice_latency.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, LightClient, ServerProcess, machine_cpu_seconds, process_cpu_seconds  # noqa: E402
from tests.rtc_client import AvatarClient, PcmTrack  # noqa: E402
from tests.spoken_sets import QUESTIONS as SPOKEN_QUESTIONS  # noqa: E402

RATE = 48_000
MIC_FLOOR = 0.01          # |sample| (full scale 1.0) above which the mic PCM counts as speech
AUDIBLE_RMS = 200.0       # int16 RMS of one decoded 20 ms frame above which the avatar is heard
NONZERO_RMS = 8.0         # above this a decoded frame is not digital silence (speech has begun)
# At or below this a frame is digital silence: what idle ticks send (Opus leaves a tail of 2-4 in
# the first one). Even the quiet stretches between words of Piper speech stay above it.
SILENT_RMS = 5.0
QUIET_CORES = 0.3         # a trial counts as uncontended when other processes used fewer cores
TARGETS_MS = {"v2v_p50": 900, "v2v_p95": 1300, "barge_in": 250}

QUESTIONS = list(SPOKEN_QUESTIONS[:14])
WARMUP_QUESTION = "Hello there."
INTERJECTIONS = [
    "Wait, stop.",
    "Hold on a second.",
    "Excuse me.",
    "Stop talking please.",
    "Sorry, one moment.",
    "No, wait.",
    "Hang on.",
    "Let me ask something.",
]
# Long and with few commas: the avatar must be audibly speaking when the user cuts in.
LONG_TEXT = ("The old lighthouse keeper climbed the narrow stairs every evening to light the great lamp "
             "that guided the fishing boats home across the dark and restless water of the northern bay "
             "and he never once missed a night in forty years of service even when the storms were so "
             "strong that the whole tower shook beneath his feet and the rain hammered against the glass "
             "like a thousand tiny drums that would not stop until the morning light came back again.")


# ---- CPU: who was busy -------------------------------------------------------------------


class CpuMonitor:
    """Samples the machine's and our processes' CPU time, so contention from others shows.

    The box is shared: a bench by someone else on 2 cores doubles ASR time. Every figure is
    reported with the cores that the server, this client and everything else were using.
    """

    def __init__(self, pids: dict[str, int], period_s: float = 0.25) -> None:
        self.pids = pids
        self.period_s = period_s
        self.samples: list[tuple[float, float, dict[str, float]]] = []  # (t, machine busy s, {name: s})
        self._task: asyncio.Task | None = None

    @staticmethod
    def _process(pid: int) -> float:
        try:
            return process_cpu_seconds(pid)
        except OSError:  # it has ended
            return float("nan")

    def sample(self) -> None:
        self.samples.append((time.monotonic(), machine_cpu_seconds(),
                             {name: self._process(pid) for name, pid in self.pids.items()}))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    async def quiet(self, max_wait_s: float, limit: float = 0.3, window_s: float = 1.5) -> float:
        """Wait (at most max_wait_s) until other processes use < limit cores; returns the wait."""
        start = time.monotonic()
        while time.monotonic() - start < max_wait_s:
            now = time.monotonic()
            load = self.cores(now - window_s, now)
            if load is not None and load["others"] < limit:
                break
            await asyncio.sleep(self.period_s)
        return round(time.monotonic() - start, 1)

    def cores(self, t0: float, t1: float) -> dict[str, float] | None:
        """Average cores busy between t0 and t1: per watched process, and 'others'."""
        inside = [s for s in self.samples if t0 - self.period_s <= s[0] <= t1 + self.period_s]
        if len(inside) < 2:
            return None
        (ta, ma, pa), (tb, mb, pb) = inside[0], inside[-1]
        span = tb - ta
        out = {name: round((pb[name] - pa[name]) / span, 2) for name in self.pids}
        out["others"] = round(max(0.0, (mb - ma) / span - sum(out.values())), 2)
        return out


# ---- what the microphone plays -----------------------------------------------------------


@dataclass(frozen=True)
class SpokenLine:
    """A line of espeak-ng speech as 48 kHz int16 mic PCM, with where the voice is in it."""

    text: str
    pcm: np.ndarray
    speech_on_s: float   # offset of the first sample above MIC_FLOOR
    speech_off_s: float  # offset of the last sample above MIC_FLOOR


def spoken_line(text: str, lead_s: float = 0.2) -> SpokenLine:
    import soxr

    from tests.speech_samples import espeak

    speech = soxr.resample(espeak(text), 16_000, RATE).astype(np.float32) * 0.8
    audio = np.concatenate([np.zeros(int(lead_s * RATE), np.float32), speech])
    loud = np.flatnonzero(np.abs(audio) > MIC_FLOOR)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced no audible speech for {text!r}")
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return SpokenLine(text, pcm, loud[0] / RATE, loud[-1] / RATE)


async def play(mic: PcmTrack, line: SpokenLine, timeout_s: float = 5.0) -> float:
    """Start `line` on the mic; returns the monotonic time its first sample was sent."""
    mic.play(line.pcm)
    deadline = time.monotonic() + timeout_s
    while mic.played_at is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the microphone track is not being pulled by the sender")
        await asyncio.sleep(0.005)
    return mic.played_at


# ---- what the client received ------------------------------------------------------------


@dataclass
class AudioFrames:
    """Decoded avatar audio frames from index `first` on: arrival times and loudness."""

    wire: np.ndarray     # first RTP packet of the frame arrived (NaN when unknown)
    decoded: np.ndarray  # the decoded frame came out of aiortc's receiver
    rms: np.ndarray

    @classmethod
    def since(cls, client: AvatarClient, first: int) -> "AudioFrames":
        r = client.received
        n = len(r.audio_times)
        wire = [r.wire_time("audio", pts) for pts in r.audio_pts[first:n]]
        rms = [float(np.sqrt(np.mean(np.square(c, dtype=np.float64)))) if c.size else 0.0
               for c in r.audio_chunks[first:n]]
        return cls(np.array([np.nan if w is None else w for w in wire], dtype=float),
                   np.array(r.audio_times[first:n], dtype=float), np.array(rms, dtype=float))

    def first_where(self, after: float, threshold: float) -> int | None:
        """Index of the first frame arriving (wire) after `after` with rms above threshold."""
        hits = np.flatnonzero((self.wire >= after) & (self.rms > threshold))
        return int(hits[0]) if hits.size else None


def event_waiter(client: AvatarClient) -> Callable:
    """wait(predicate, since, timeout): an event matching predicate among events[since:] or later."""

    async def wait(predicate, since: int, timeout: float) -> tuple[float, dict]:
        for t, event in client.events[since:]:
            if predicate(event):
                return t, event
        event = await client.wait_new_event(predicate, timeout=timeout)
        return next(t for t, e in reversed(client.events) if e is event), event

    return wait


def is_final(kind: str) -> Callable[[dict], bool]:
    return lambda e: e.get("type") == kind and e.get("final") is True


async def session_turns(client: AvatarClient) -> list[dict]:
    status, body = await client.request("GET", f"/sessions/{client.session_id}")
    if status != 200 or body is None:
        raise RuntimeError(f"GET /sessions/{client.session_id} answered {status}: {body}")
    return body.get("turns", [])


async def settle(client: AvatarClient, since: int, idle_s: float = 0.8) -> None:
    """Let the current reply finish generating, cut its speech, and leave a short idle gap."""
    wait = event_waiter(client)
    try:
        await wait(is_final("reply"), since, 60.0)
    except asyncio.TimeoutError:
        pass
    await client.request("POST", f"/sessions/{client.session_id}/interrupt")
    await asyncio.sleep(idle_s)


def ms(a: float | None, b: float | None) -> float | None:
    """b - a in ms, or None."""
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
        return None
    return round((b - a) * 1000, 1)


# ---- 1 + 2: voice to voice ---------------------------------------------------------------


@dataclass
class VoiceTurn:
    question: str
    transcript: str = ""
    reply: str = ""
    error: str | None = None
    total_wire_ms: float | None = None     # user speech end -> first audible reply frame on the wire
    total_decoded_ms: float | None = None  # same, decoded frame out of the client's jitter buffer
    event_ms: float | None = None          # same, to the speech_start event on the data channel
    stages_ms: dict = field(default_factory=dict)  # the server's, as returned by GET /sessions/{id}
    client_ms: dict = field(default_factory=dict)  # the parts the server cannot see
    history_messages: int = 0              # chat messages before this question in the session
    cpu_cores: dict | None = None          # cores busy from the question's start to the reply


async def voice_turn(client: AvatarClient, line: SpokenLine, history: int, cpu: CpuMonitor) -> VoiceTurn:
    """Play one question and time the reply."""
    wait = event_waiter(client)
    result = VoiceTurn(question=line.text, history_messages=history)
    since, audio_first = len(client.events), len(client.received.audio_times)
    played_at = await play(client.mic, line)
    user_end = played_at + line.speech_off_s
    try:
        _, transcript = await wait(is_final("transcript"), since, 30.0)
        result.transcript = transcript["text"]
        if not result.transcript:
            result.error = "empty transcript"
            return result
        t_start, start = await wait(lambda e: e.get("type") == "speech_start", since, 60.0)
    except asyncio.TimeoutError:
        result.error = "no reply speech within the timeout"
        await settle(client, since)
        return result
    await asyncio.sleep(1.0)  # let the reply's first audio arrive and be decoded
    frames = AudioFrames.since(client, audio_first)
    await settle(client, since)
    result.reply = next((e["text"] for _, e in client.events[since:] if is_final("reply")(e)), "")
    turn = next((t for t in await session_turns(client) if t.get("utterance_id") == start["utterance_id"]), None)
    audible = frames.first_where(user_end, AUDIBLE_RMS)
    if audible is None or turn is None:
        result.error = "no audible reply audio" if turn is not None else "turn missing from GET /sessions/{id}"
        return result
    onset = frames.first_where(user_end, NONZERO_RMS)
    wire, decoded = frames.wire[audible], frames.decoded[audible]
    result.total_wire_ms = ms(user_end, wire)
    result.cpu_cores = cpu.cores(played_at, wire)
    result.total_decoded_ms = ms(user_end, decoded)
    result.event_ms = ms(user_end, t_start)
    result.stages_ms = dict(turn["stages_ms"])
    result.client_ms = {
        # mic packets -> server (aiortc jitter buffer, resampling) plus where the VAD put the end
        "uplink_and_vad_end": ms(user_end, turn["speech_end"]),
        # first speech tick on the server clock -> its first RTP packet here (encode, pacing, UDP)
        "first_frame_to_wire": ms(turn["first_frame"], frames.wire[onset]) if onset is not None else None,
        # the reply's first frames are quiet (TTS lead-in, word onset) before they are audible
        "quiet_lead_in": ms(frames.wire[onset], wire) if onset is not None else None,
        "client_jitter_buffer": ms(wire, decoded),
    }
    return result


STAGES = ["end_of_turn_wait", "asr", "llm_first_token", "llm_first_clause", "tts_first_audio", "answer_hold",
          "first_frame"]
SUM_PARTS = ["uplink_and_vad_end", "end_of_turn_wait", "asr", "llm_first_clause", "tts_first_audio",
             "answer_hold", "first_frame", "first_frame_to_wire", "quiet_lead_in"]


def stage_sum(turn: VoiceTurn) -> float | None:
    """Client and server parts that should add up to total_wire_ms."""
    # answer_hold: only a turn judged unsure waits for its silence (server code before it: none).
    parts = {"answer_hold": 0.0, **turn.stages_ms, **turn.client_ms}
    if parts["answer_hold"] is None:
        parts["answer_hold"] = 0.0
    values = [parts.get(k) for k in SUM_PARTS]
    return round(sum(values), 1) if all(v is not None for v in values) else None


# ---- 3: barge-in -------------------------------------------------------------------------


@dataclass
class BargeIn:
    interjection: str
    error: str | None = None
    interrupted: bool | None = None
    cut_wire_ms: float | None = None  # onset -> first frame (wire) after which only silence arrives
    cut_decoded_ms: float | None = None
    # onset -> first frame after which nothing audible arrives; may precede the cut (a pause
    # between words), or even the onset (paused_at_onset)
    inaudible_wire_ms: float | None = None
    paused_at_onset: bool = False
    event_ms: float | None = None     # onset -> speech_end(interrupted) on the data channel
    cpu_cores: dict | None = None
    rms_trace: list = field(default_factory=list)  # (ms from onset by wire arrival, RMS) around the cut


async def barge_in(client: AvatarClient, line: SpokenLine, talk_s: float, cpu: CpuMonitor) -> BargeIn:
    """Let the avatar talk for talk_s, then cut in with `line`."""
    wait = event_waiter(client)
    result = BargeIn(interjection=line.text)
    since = len(client.events)
    uid = await client.say(LONG_TEXT)
    try:
        await wait(lambda e: e.get("type") == "speech_start" and e.get("utterance_id") == uid, since, 30.0)
    except asyncio.TimeoutError:
        result.error = "the long text never started playing"
        return result
    await asyncio.sleep(talk_s)
    audio_first = len(client.received.audio_times)
    since_cut = len(client.events)
    played_at = await play(client.mic, line)
    onset = played_at + line.speech_on_s
    try:
        t_end, end = await wait(lambda e: e.get("type") == "speech_end" and e.get("utterance_id") == uid,
                                since_cut, 5.0)
    except asyncio.TimeoutError:
        result.error = "the avatar was not interrupted within 5 s"
        await client.request("POST", f"/sessions/{client.session_id}/interrupt")
        await settle(client, since_cut)
        return result
    result.interrupted = bool(end.get("interrupted"))
    result.event_ms = ms(onset, t_end)
    result.cpu_cores = cpu.cores(onset - 1.0, t_end)
    await asyncio.sleep(1.5)
    # The user's words become a turn; its reply must not be mistaken for the cut-off speech.
    reply_on_air = [t["first_frame"] for t in await session_turns(client)
                    if t.get("first_frame") is not None and t["first_frame"] > onset]
    window_end = min(reply_on_air, default=onset + 3.0) - 0.02
    frames = AudioFrames.since(client, audio_first)
    near = np.flatnonzero((frames.wire >= onset - 0.2) & (frames.wire < onset + 1.0))
    result.rms_trace = [(ms(onset, frames.wire[i]), round(float(frames.rms[i]))) for i in near]
    inside = (frames.wire >= onset - 0.4) & (frames.wire < window_end)
    speech = np.flatnonzero(inside & (frames.rms > SILENT_RMS))
    audible = np.flatnonzero(inside & (frames.rms > AUDIBLE_RMS))
    if audible.size == 0 or frames.wire[audible[0]] >= onset:
        result.error = "the avatar was not audible before the onset"
    elif speech[-1] + 1 >= frames.wire.size:
        result.error = "the avatar never went silent"
    else:
        cut = int(speech[-1]) + 1
        result.cut_wire_ms = ms(onset, frames.wire[cut])
        result.cut_decoded_ms = ms(onset, frames.decoded[cut])
        inaudible = int(audible[-1]) + 1
        result.paused_at_onset = bool(frames.wire[inaudible] <= onset)
        result.inaudible_wire_ms = ms(onset, frames.wire[inaudible])
    await settle(client, since_cut)
    return result


# ---- figures -----------------------------------------------------------------------------


def spread(values: list[float | None]) -> dict:
    xs = np.array([v for v in values if v is not None], dtype=float)
    if xs.size == 0:
        return {"n": 0}
    return {"n": int(xs.size), "p50": round(float(np.percentile(xs, 50)), 1),
            "p95": round(float(np.percentile(xs, 95)), 1), "min": round(float(xs.min()), 1),
            "max": round(float(xs.max()), 1)}


def quiet(cores: dict | None) -> bool:
    return cores is not None and cores["others"] < QUIET_CORES


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "ok" if value < target else f"MISSED (target < {target} ms)"


def report(turns: list[VoiceTurn], cuts: list[BargeIn], warmup: VoiceTurn | None) -> dict:
    good = [t for t in turns if t.error is None]
    summary = {
        "v2v_wire_ms": spread([t.total_wire_ms for t in good]),
        "v2v_wire_quiet_ms": spread([t.total_wire_ms for t in good if quiet(t.cpu_cores)]),
        "v2v_decoded_ms": spread([t.total_decoded_ms for t in good]),
        "v2v_event_ms": spread([t.event_ms for t in good]),
        "stages_p50_ms": {k: spread([t.stages_ms.get(k) for t in good]).get("p50") for k in
                          ["server_total", *STAGES]},
        "client_p50_ms": {k: spread([t.client_ms.get(k) for t in good]).get("p50") for k in
                          ["uplink_and_vad_end", "first_frame_to_wire", "quiet_lead_in", "client_jitter_buffer"]},
        "unexplained_p50_ms": spread([None if stage_sum(t) is None else t.total_wire_ms - stage_sum(t)
                                      for t in good]).get("p50"),
        "outside_server_p50_ms": spread([t.total_wire_ms - t.stages_ms["server_total"] for t in good
                                         if t.stages_ms.get("server_total") is not None]).get("p50"),
        "failed_questions": [asdict(t) for t in turns if t.error is not None],
        "cores_p50": {k: spread([(t.cpu_cores or {}).get(k) for t in good]).get("p50")
                      for k in ("server", "client", "others")},
    }
    valid_cuts = [c for c in cuts if c.cut_wire_ms is not None]
    summary["barge_in_wire_ms"] = spread([c.cut_wire_ms for c in valid_cuts])
    summary["barge_in_wire_quiet_ms"] = spread([c.cut_wire_ms for c in valid_cuts if quiet(c.cpu_cores)])
    summary["barge_in_decoded_ms"] = spread([c.cut_decoded_ms for c in valid_cuts])
    summary["barge_in_inaudible_ms"] = spread([c.inaudible_wire_ms for c in valid_cuts])
    summary["barge_in_event_ms"] = spread([c.event_ms for c in cuts if c.interrupted])
    summary["barge_in_not_interrupted"] = sum(1 for c in cuts if c.interrupted is False or c.error)

    print("\nvoice-to-voice, per question (ms; wire = first RTP packet of the first audible reply frame;"
          " others = cores used by processes not ours)")
    head = ("question", "wire", "decoded", "uplink", "eot", "asr", "tok1", "clause1", "tts1", "hold", "frame1",
            "to_wire", "lead_in", "sum", "others", "hist")
    line = "  {:<30} {:>6} {:>7} {:>6} {:>5} {:>5} {:>5} {:>7} {:>5} {:>5} {:>6} {:>7} {:>7} {:>6} {:>6} {:>4}"
    print(line.format(*head))

    def cell(v):
        return "-" if v is None else f"{v:.0f}"

    for t in turns:
        if t.error is not None:
            print(f"  {t.question:<30} FAILED: {t.error} (heard {t.transcript!r})")
            continue
        s, c = t.stages_ms, t.client_ms
        row = (t.question[:30], t.total_wire_ms, t.total_decoded_ms, c["uplink_and_vad_end"], s["end_of_turn_wait"],
               s["asr"], s["llm_first_token"], s["llm_first_clause"], s["tts_first_audio"], s.get("answer_hold"),
               s["first_frame"],
               c["first_frame_to_wire"], c["quiet_lead_in"], stage_sum(t))
        others = (t.cpu_cores or {}).get("others")
        print(line.format(row[0], *map(cell, row[1:]), "-" if others is None else f"{others:.2f}",
                          t.history_messages))
    for t in good:
        print(f"    {t.question!r} heard {t.transcript!r} -> {t.reply[:70]!r}")
    if warmup is not None:
        print(f"  (warm-up turn, not counted: wire {cell(warmup.total_wire_ms)} ms, "
              f"llm_first_clause {cell(warmup.stages_ms.get('llm_first_clause'))} ms)")
    w = summary["v2v_wire_ms"]
    print(f"\nvoice-to-voice at the wire: p50 {w.get('p50')} ms, p95 {w.get('p95')} ms, n={w['n']} "
          f"-> p50 {verdict(w.get('p50'), TARGETS_MS['v2v_p50'])}, p95 {verdict(w.get('p95'), TARGETS_MS['v2v_p95'])}")
    q = summary["v2v_wire_quiet_ms"]
    print(f"  the same, trials where others used < {QUIET_CORES} cores: p50 {q.get('p50')} ms, "
          f"p95 {q.get('p95')} ms, n={q['n']}")
    d = summary["v2v_decoded_ms"]
    print(f"voice-to-voice decoded:     p50 {d.get('p50')} ms, p95 {d.get('p95')} ms")
    e = summary["v2v_event_ms"]
    print(f"to speech_start event:      p50 {e.get('p50')} ms, p95 {e.get('p95')} ms")
    print("p50 per stage (ms): " + ", ".join(f"{k} {v}" for k, v in
                                             {**summary["client_p50_ms"], **summary["stages_p50_ms"]}.items()))
    print(f"measured total minus the server's own server_total: p50 {summary['outside_server_p50_ms']} ms "
          "(= uplink_and_vad_end + first_frame_to_wire + quiet_lead_in)")
    print(f"measured total minus the sum of all parts: p50 {summary['unexplained_p50_ms']} ms "
          "(server and client share one monotonic clock)")
    print(f"cores busy during the turns, p50: {summary['cores_p50']} (others = processes not ours)")

    print("\nbarge-in (onset of the user's speech -> only silence arrives; wire = first RTP packet)")
    for c in cuts:
        state = c.error or ("(the avatar was between words at the onset)" if c.paused_at_onset else "")
        print(f"  {c.interjection:<24} wire {cell(c.cut_wire_ms):>5}  decoded {cell(c.cut_decoded_ms):>5}  "
              f"inaudible {cell(c.inaudible_wire_ms):>5}  "
              f"speech_end event {cell(c.event_ms):>5}  interrupted={c.interrupted} {state}")
    b = summary["barge_in_wire_ms"]
    print(f"barge-in at the wire: p50 {b.get('p50')} ms, p95 {b.get('p95')} ms, n={b['n']} "
          f"-> p50 {verdict(b.get('p50'), TARGETS_MS['barge_in'])}, p95 {verdict(b.get('p95'), TARGETS_MS['barge_in'])}")
    q = summary["barge_in_wire_quiet_ms"]
    print(f"  the same, trials where others used < {QUIET_CORES} cores: p50 {q.get('p50')} ms, n={q['n']}")
    return summary


# ---- main --------------------------------------------------------------------------------


async def connect(base_url: str, timeout_s: float = 20.0) -> AvatarClient:
    """A peer like the browser's, except that it does not decode the video (nobody looks at
    it here, and decoding it would take CPU from the server on this small machine)."""
    client = LightClient(base_url)
    await client.connect()
    deadline = time.monotonic() + timeout_s
    while len(client.complete_video) < 5 or len(client.received.audio_times) < 10:
        if time.monotonic() > deadline:
            raise TimeoutError(f"media did not arrive from {base_url} within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    await client.wait_event(lambda e: e.get("type") == "state")
    return client


async def run(args: argparse.Namespace) -> dict:
    n_questions = 4 if args.quick and args.questions is None else (args.questions or 12)
    n_cuts = 3 if args.quick and args.barge_ins is None else (args.barge_ins or 6)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n_questions)]
    server_args = ["--llm", args.llm, "--end-silence-ms", str(args.end_silence_ms), *args.server_arg]
    server = ServerProcess("voice", server_args, script=args.server_script)
    print(f"starting: {' '.join(server.args[1:])}")
    lines = {text: spoken_line(text) for text in [WARMUP_QUESTION, *questions]}
    cut_lines = [spoken_line(INTERJECTIONS[i % len(INTERJECTIONS)], lead_s=0.0) for i in range(n_cuts)]
    started = time.monotonic()
    client: AvatarClient | None = None
    cpu: CpuMonitor | None = None
    waited = 0.0
    try:
        await server.start()
        health = await server.health()
        print(f"server ready in {time.monotonic() - started:.0f} s: load {health.get('load_seconds')}")
        cpu = CpuMonitor({"server": server.pid, "client": os.getpid()})
        cpu.start()
        client = await connect(server.url)
        await asyncio.sleep(2.0)  # let the peer's bandwidth estimate and clocks settle
        idle = cpu.cores(time.monotonic() - 1.5, time.monotonic())
        print(f"cores busy with one idle session connected: {idle}")
        warmup = await voice_turn(client, lines[WARMUP_QUESTION], history=0, cpu=cpu)
        history = 2
        turns: list[VoiceTurn] = []
        for i, text in enumerate(questions):
            if args.turns_per_session and i and i % args.turns_per_session == 0:
                await client.close()
                client = await connect(server.url)
                history = 0
            waited += await cpu.quiet(args.wait_quiet)
            turn = await voice_turn(client, lines[text], history=history, cpu=cpu)
            history += 2
            turns.append(turn)
            print(f"  [{i + 1}/{n_questions}] {text!r}: "
                  + (f"{turn.total_wire_ms} ms" if turn.error is None else f"failed: {turn.error}")
                  + f"  cores {turn.cpu_cores}", flush=True)
        cuts: list[BargeIn] = []
        for i, line in enumerate(cut_lines):
            waited += await cpu.quiet(args.wait_quiet)
            # Vary the phase against the clock's 40 ms ticks and the words of the long text.
            cut = await barge_in(client, line, talk_s=1.2 + 0.37 * i, cpu=cpu)
            cuts.append(cut)
            print(f"  barge-in [{i + 1}/{n_cuts}] {line.text!r}: "
                  + (cut.error or f"{cut.cut_wire_ms} ms") + f"  cores {cut.cpu_cores}", flush=True)
    finally:
        if client is not None:
            await client.close()
        if cpu is not None:
            await cpu.stop()
        server.stop()
    summary = report(turns, cuts, warmup)
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "server": " ".join(server.args[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "definitions": {
            "v2v": "user speech end in the mic audio (played_at + offset of the last sample above "
                   f"{MIC_FLOOR} full scale) -> first decoded avatar audio frame with RMS > {AUDIBLE_RMS} "
                   "(int16), by the arrival of its first RTP packet (wire) or by its decode (decoded)",
            "barge_in": "user speech onset in the mic audio -> first avatar audio frame (wire arrival) after "
                        f"which RMS stays <= {SILENT_RMS} (digital silence: the server sends idle ticks) "
                        "until the reply to the interjection goes on air; 'inaudible' uses RMS "
                        f"<= {AUDIBLE_RMS} instead, which a pause between words can satisfy early",
            "clock": "server turn timestamps are time.monotonic() of the server process, the same clock here",
        },
        "targets_ms": TARGETS_MS,
        "idle_session_cores": idle,
        "waited_for_quiet_s": round(waited, 1),
        "summary": summary,
        "warmup": asdict(warmup),
        "questions": [asdict(t) for t in turns],
        "barge_in": [asdict(c) for c in cuts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=None, help="spoken questions (default 12; 4 with --quick)")
    parser.add_argument("--barge-ins", type=int, default=None, help="barge-in trials (default 6; 3 with --quick)")
    parser.add_argument("--llm", choices=["local", "echo"], default="local", help="the server's reply model")
    parser.add_argument("--end-silence-ms", type=int, default=300, help="the server's end-of-turn silence")
    parser.add_argument("--quick", action="store_true", help="fewer questions and trials")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each trial wait up to S s until other processes use < 0.3 cores "
                             "(the machine may be shared)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for run.py (repeatable), e.g. --server-arg=--queue-ms=200")
    parser.add_argument("--turns-per-session", type=int, default=0, metavar="N",
                        help="open a new session every N questions (default: one conversation for all; "
                             "its history grows to --history-turns and is then trimmed)")
    parser.add_argument("--server-script", type=Path, default=ROOT / "run.py",
                        help="the server's entry point (a what-if variant of run.py, for experiments)")
    parser.add_argument("--out", type=Path, default=OUT / "voice_latency.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
