"""Prometheus metrics for GET /metrics: one registry per app, read from sessions at scrape time."""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGES = ("end_of_turn_wait", "asr", "llm_first_token", "llm_first_clause", "tts_first_audio",
          "first_frame", "server_total")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.9, 1.3, 2.0, 3.0, 5.0, 10.0)
_STREAM_COUNTERS = {
    "speech_frames": ("avatar_speech_frames", "Frames sent while speaking"),
    "idle_frames": ("avatar_idle_frames", "Idle frames sent"),
    "underruns": ("avatar_underrun_frames", "Ticks where the renderer was late mid-utterance (video repeated)"),
    "late_ticks": ("avatar_late_ticks", "Ticks emitted more than one frame after their due time"),
    "skipped_ticks": ("avatar_skipped_ticks", "Ticks given up after a long event-loop stall"),
    "rested_ticks": ("avatar_rested_ticks", "Still idle ticks no output needed (a resting viseme session)"),
}


class _SessionCollector:
    """Reads live sessions' counters at scrape time; keeps the totals of ended sessions."""

    def __init__(self, sessions: Callable[[], Iterable]) -> None:
        self._sessions = sessions
        self.ended = {key: 0 for key in _STREAM_COUNTERS}
        self.ended_frames = 0

    def retire(self, session) -> None:
        stats = session.stream.stats
        for key in _STREAM_COUNTERS:
            self.ended[key] += getattr(stats, key)
        self.ended_frames += stats.ticks

    def collect(self):
        sessions = list(self._sessions())
        yield GaugeMetricFamily("avatar_sessions", "Open sessions", value=len(sessions))
        frames = CounterMetricFamily("avatar_frames_sent", "AVFrames emitted by session clocks",
                                     value=self.ended_frames + sum(s.stream.stats.ticks for s in sessions))
        yield frames
        for key, (name, doc) in _STREAM_COUNTERS.items():
            total = self.ended[key] + sum(getattr(s.stream.stats, key) for s in sessions)
            yield CounterMetricFamily(name, doc, value=total)
        depth = GaugeMetricFamily("avatar_queue_depth_frames", "Rendered frames waiting for the clock",
                                  labels=["session"])
        for s in sessions:
            depth.add_metric([s.id], len(s.queue))
        yield depth


class ServerMetrics:
    """Everything /metrics reports for one app."""

    def __init__(self, sessions: Callable[[], Iterable]) -> None:
        self.registry = CollectorRegistry()
        self._sessions = _SessionCollector(sessions)
        self.registry.register(self._sessions)
        self.stage_latency = Histogram("avatar_stage_latency_seconds", "Latency of each stage of a turn",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("avatar_errors", "Errors reported to clients, by stage", ["stage"],
                              registry=self.registry)
        self.sessions_started = Counter("avatar_sessions_started", "Sessions created", registry=self.registry)
        # Every session's clock waits while it runs: the sweep after sessions close (rtc_server/sweeper.py).
        self.gc_sweep = Histogram("avatar_gc_sweep_seconds", "Garbage collections run after sessions closed",
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
                                  registry=self.registry)

    def session_ended(self, session) -> None:
        self._sessions.retire(session)

    def observe_turn(self, stages_ms: dict) -> None:
        for stage, ms in stages_ms.items():
            if ms is not None and stage in STAGES:
                self.stage_latency.labels(stage).observe(ms / 1000)

    def error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
