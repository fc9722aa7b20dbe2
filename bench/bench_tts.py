"""Piper TTS and viseme timings on this machine.

    python3 bench/bench_tts.py [--runs 10] [--threads 0 1 2]

Prints: voice load time with a cold and a warm patched-model cache, first-chunk latency
(p50/p90) and real-time factor per onnxruntime intra-op thread count, the cost of
mouth_track / audio_mouth_track for the synthesized sentence, and the pause Piper opens an
answer's first words with (its "^", which rtc_server/speaker.py cuts to 20 ms at an utterance's
start), over the 32 questions of tests/spoken_sets.py said as the speaker's opening phrase, and how
far before the end of that "^" mark the voice already sounds.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.lipsync.visemes import audio_mouth_track, mouth_track  # noqa: E402
from models.speech import first_sound  # noqa: E402
from models.tts import PiperTTS  # noqa: E402

TEXT = "Hello there, it is nice to meet you."
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog while the band plays on, "
    "and everybody in the park stops to listen for a while."
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_load(cache_dir: Path, threads: int | None) -> PiperTTS:
    t0 = time.perf_counter()
    PiperTTS(cache_dir=cache_dir, intra_op_threads=threads)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    tts = PiperTTS(cache_dir=cache_dir, intra_op_threads=threads)
    warm = time.perf_counter() - t0
    print(f"load: cold cache (patch + save) {cold:.2f} s, warm cache {warm:.2f} s")
    return tts


def bench_synthesis(voices: dict[str, PiperTTS], runs: int) -> None:
    """First-chunk latency and real-time factor, runs interleaved across the voices so that
    load from other processes hits every configuration alike."""
    first: dict[str, list[float]] = {label: [] for label in voices}
    rtf: dict[str, list[float]] = {label: [] for label in voices}
    for label, tts in voices.items():
        t0 = time.perf_counter()
        tts.warmup()
        print(f"[{label}] warmup {time.perf_counter() - t0:.3f} s")
    duration = 0.0
    for _ in range(runs):
        for label, tts in voices.items():
            t0 = time.perf_counter()
            chunk = next(iter(tts.synthesize(TEXT)))
            first[label].append(time.perf_counter() - t0)
            duration = chunk.duration
            t0 = time.perf_counter()
            long_audio = sum(c.duration for c in tts.synthesize(LONG_TEXT))
            rtf[label].append((time.perf_counter() - t0) / long_audio)
    print(f"first chunk of {TEXT!r} ({duration:.2f} s of audio), {runs} runs:")
    for label in voices:
        f = first[label]
        print(
            f"  [{label}] p50 {statistics.median(f) * 1e3:.0f} ms, p90 {_percentile(f, 0.9) * 1e3:.0f} ms, "
            f"min {min(f) * 1e3:.0f} ms; real-time factor (long sentence) p50 "
            f"{statistics.median(rtf[label]):.3f}"
        )


def bench_visemes(tts: PiperTTS, fps: int = 25, runs: int = 200) -> None:
    chunk = next(iter(tts.synthesize(LONG_TEXT)))
    n = math.ceil(chunk.duration * fps)
    for name, fn in (
        ("mouth_track", lambda: mouth_track(chunk.phonemes, n, fps)),
        ("audio_mouth_track", lambda: audio_mouth_track(chunk.audio, chunk.sample_rate, n, fps)),
    ):
        fn()
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        per = (time.perf_counter() - t0) / runs
        print(f"{name}: {per * 1e3:.2f} ms for {chunk.duration:.2f} s of speech ({n} frames at {fps} fps)")


def bench_opening_pause(tts: PiperTTS, lead_words: int = 3) -> None:
    from models.lead_phrase import split_lead
    from tests.spoken_sets import QUESTIONS

    pauses, early = [], []
    for question in QUESTIONS:
        chunk = next(iter(tts.synthesize(split_lead(question, lead_words)[0])))
        pauses.append(chunk.phonemes[0].end * 1000)
        voiced = first_sound(chunk.audio) or 0
        early.append(pauses[-1] - voiced / chunk.sample_rate * 1000)  # how far the voice starts before "^" ends
    pauses.sort()
    print(f"opening pause of the first words ({len(pauses)} questions as opening phrases): "
          f"p50 {statistics.median(pauses):.0f} ms, p90 {_percentile(pauses, 0.9):.0f} ms, max {pauses[-1]:.0f} ms "
          "(Piper varies it from call to call)")
    print(f"  the voice (-50 dBFS) starts before the end of Piper's \"^\" by up to {max(early):.0f} ms, by more than "
          f"20 ms in {sum(e > 20 for e in early)} of {len(early)} (a cut 20 ms before the mark would clip it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0, 1, 2],
        help="onnxruntime intra-op threads to compare (0 = onnxruntime's default)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        default = bench_load(Path(tmp), None)
        voices = {
            f"intra_op_threads={threads or 'default'}": (
                PiperTTS(cache_dir=Path(tmp), intra_op_threads=threads) if threads else default
            )
            for threads in args.threads
        }
        bench_synthesis(voices, args.runs)
        bench_visemes(default)
        bench_opening_pause(default)


if __name__ == "__main__":
    main()
