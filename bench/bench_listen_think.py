"""Listening and thinking latency on this machine: VAD, ASR and the local LLM.

    python3 bench/bench_listen_think.py [--runs 5] [--asr-threads 0 1 2] [--llm-threads 1 2]

Prints: VAD cost per 20 ms push (what a WebRTC mic delivers) and onset/end detection
delay in stream time; ASR latency (p50/p90) for a 2.4 s spoken question per CTranslate2
thread count; LLM time to first token, to first speakable clause and tokens/s per llama.cpp
thread count, with the default persona and history. Configurations are interleaved run by
run so that load from other processes hits them alike.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.asr import SpeechRecognizer  # noqa: E402
from models.llm import ChatHistory, ClauseSplitter  # noqa: E402
from models.vad import SpeechEnd, SpeechStart, VoiceActivityDetector  # noqa: E402
from tests.speech_samples import concat, espeak, silence, speech_bounds  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "Can you tell me a joke?",
    "What should I cook tonight?",
    "Hello, who are you?",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_vad() -> None:
    detector = VoiceActivityDetector()
    sentence = espeak(QUESTIONS[0])
    audio = concat(silence(1.0), sentence, silence(1.0))
    costs: list[float] = []
    events = []
    for _ in range(5):
        stream = detector.stream()
        events = []
        for i in range(0, audio.size, 320):
            t0 = time.perf_counter()
            events += stream.push(audio[i : i + 320])
            costs.append(time.perf_counter() - t0)
    total = sum(costs) / 5
    print(
        f"VAD: per 20 ms push mean {statistics.mean(costs) * 1e6:.0f} us, "
        f"p99 {pct(costs, 0.99) * 1e6:.0f} us; {total / (audio.size / 16000) * 100:.2f}% of one core"
    )
    first, last = speech_bounds(sentence)
    start = next(e for e in events if isinstance(e, SpeechStart))
    end = next(e for e in events if isinstance(e, SpeechEnd))
    print(
        f"VAD: onset detected {ms(start.detected_at - (1.0 + first))} after speech began; "
        f"end of turn detected {ms(end.detected_at - (1.0 + last))} after speech ended "
        f"(end_silence_ms={stream.config.end_silence_ms:.0f}), stream time"
    )


def bench_asr(runs: int, thread_counts: list[int]) -> None:
    audio = concat(silence(0.2), espeak(QUESTIONS[0]), silence(0.2))
    recognizers = {}
    for threads in thread_counts:
        t0 = time.perf_counter()
        recognizer = SpeechRecognizer(cpu_threads=threads)
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        recognizer.warmup()
        print(f"ASR[threads={threads}]: load {loaded:.2f} s, warmup {time.perf_counter() - t0:.2f} s "
              f"({recognizer.device}/{recognizer.compute_type})")
        recognizers[threads] = recognizer
    latencies: dict[int, list[float]] = {t: [] for t in thread_counts}
    text = ""
    for _ in range(runs):
        for threads, recognizer in recognizers.items():
            t0 = time.perf_counter()
            text = recognizer.transcribe(audio).text
            latencies[threads].append(time.perf_counter() - t0)
    for threads, values in latencies.items():
        print(f"ASR[threads={threads}]: {audio.size / 16000:.1f} s utterance -> p50 {ms(pct(values, 0.5))}, "
              f"p90 {ms(pct(values, 0.9))} over {runs}")
    print(f"ASR: heard {text!r}")


async def one_reply(model, messages: list[dict]) -> tuple[float, float | None, float, int]:
    splitter = ClauseSplitter()
    t0 = time.perf_counter()
    first_token = None
    first_clause = None
    async for delta in model.stream(messages):
        now = time.perf_counter() - t0
        if first_token is None:
            first_token = now
        if splitter.feed(delta) and first_clause is None:
            first_clause = now
    total = time.perf_counter() - t0
    if first_clause is None and splitter.flush():
        first_clause = total
    return first_token or total, first_clause, total, model.last_token_count


async def bench_llm(runs: int, thread_counts: list[int]) -> None:
    from models.llm.local import LlamaChatModel

    history = ChatHistory()
    models = {}
    for threads in thread_counts:
        t0 = time.perf_counter()
        model = LlamaChatModel(n_threads=threads, seed=1)
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.warmup(history.system_prompt)
        print(f"LLM[threads={threads}]: load {loaded:.2f} s, warmup {time.perf_counter() - t0:.2f} s ({model.name})")
        models[threads] = model
    stats: dict[int, dict[str, list[float]]] = {
        t: {"ttft": [], "clause": [], "tps": []} for t in thread_counts
    }
    for run in range(runs):
        messages = history.messages(pending_user=QUESTIONS[run % len(QUESTIONS)])
        for threads, model in models.items():
            ttft, clause, total, tokens = await one_reply(model, messages)
            stats[threads]["ttft"].append(ttft)
            if clause is not None:
                stats[threads]["clause"].append(clause)
            if total > ttft and tokens > 1:
                stats[threads]["tps"].append((tokens - 1) / (total - ttft))
    for threads, values in stats.items():
        clause = values["clause"]
        print(
            f"LLM[threads={threads}]: first token p50 {ms(pct(values['ttft'], 0.5))}, "
            f"first clause p50 {ms(pct(clause, 0.5)) if clause else 'n/a'}, "
            f"{statistics.median(values['tps']) if values['tps'] else 0:.0f} tokens/s over {runs}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--asr-threads", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--llm-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip", nargs="*", default=[], choices=["vad", "asr", "llm"])
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "vad" not in args.skip:
        bench_vad()
    if "asr" not in args.skip:
        bench_asr(args.runs, args.asr_threads)
    if "llm" not in args.skip:
        asyncio.run(bench_llm(args.runs, args.llm_threads))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
