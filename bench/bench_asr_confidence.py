"""Does recognition confidence tell a misheard fragment from a finished question?

    python bench/bench_asr_confidence.py                        # en-us+f3 and en-gb+m1
    python bench/bench_asr_confidence.py --voices en-us+m3 --threshold -0.4

A fragment heard as a finished sentence ("What is the capital of" -> "What is the capital on?") is
judged finished by its words and often by Smart Turn, and a fast reply model answers it before the
user goes on. This bench asks whether Whisper's own confidence (the decoding's average log
probability) could hold such turns back. Each first half of tests/spoken_sets.PAUSED (cut where
the sentence pauses, with the VAD's 200 ms pre-roll and 160 ms of the pause, as the server's
speculation hears it) and each of the first 16 questions of tests/spoken_sets.QUESTIONS is
recognised by tiny.en. It prints them sorted by average log probability, with what the words alone
say (models/turn.judge_words: "open" means the words leave the verdict to the voice, where a
fragment is dangerous), and how many of each kind fall under --threshold.

Writes bench/out/asr_confidence.json (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT  # noqa: E402
from models.asr import SpeechRecognizer  # noqa: E402
from models.turn import judge_words  # noqa: E402
from tests.speech_samples import SAMPLE_RATE, espeak  # noqa: E402
from tests.spoken_sets import PAUSED, QUESTIONS, paused_sentence  # noqa: E402

PRE_ROLL_S, PAUSE_S, LOUD = 0.2, 0.16, 0.01


def as_heard(audio: np.ndarray, end: int) -> np.ndarray:
    """From the pre-roll before the first loud sample to 160 ms after `end`."""
    first = int(np.flatnonzero(np.abs(audio) > LOUD)[0])
    return audio[max(0, first - int(PRE_ROLL_S * SAMPLE_RATE)): end + int(PAUSE_S * SAMPLE_RATE)]


def fragment(first: str, second: str, voice: str) -> np.ndarray:
    audio, _ = paused_sentence(first, second, 900, voice)
    loud = np.flatnonzero(np.abs(audio) > LOUD)
    gap = int(np.argmax(np.diff(loud)))  # the longest silence is the pause
    return as_heard(audio, int(loud[gap]) + 1)


def question(text: str, voice: str) -> np.ndarray:
    audio = espeak(text, voice)
    return as_heard(audio, int(np.flatnonzero(np.abs(audio) > LOUD)[-1]) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", nargs="+", default=["en-us+f3", "en-gb+m1"])
    parser.add_argument("--threshold", type=float, default=-0.3, help="average log probability counted as unsure")
    parser.add_argument("--out", type=Path, default=OUT / "asr_confidence.json")
    args = parser.parse_args()
    asr = SpeechRecognizer("tiny.en", cpu_threads=1)
    rows = []
    for voice in args.voices:
        clips = [("fragment", first, fragment(first, second, voice)) for first, second in PAUSED]
        clips += [("question", q, question(q, voice)) for q in QUESTIONS[:16]]
        for kind, said, audio in clips:
            heard = asr.transcribe(audio)
            words = judge_words(heard.text)
            rows.append({"kind": kind, "voice": voice, "said": said, "heard": heard.text,
                         "avg_logprob": round(heard.segments[0].avg_logprob, 3) if heard.segments else None,
                         "words": words.verdict.value if words is not None else "open"})
    rows.sort(key=lambda r: r["avg_logprob"] if r["avg_logprob"] is not None else -9.0)
    for r in rows:
        logprob = "-" if r["avg_logprob"] is None else f"{r['avg_logprob']:.3f}"
        print(f"  {r['kind']:8s} {r['voice']:9s} {logprob:>7s} {r['words']:10s} {r['heard']!r}")
    print(f"words left open (the voice decides), under {args.threshold}:")
    for kind in ("fragment", "question"):
        open_ = [r for r in rows if r["kind"] == kind and r["words"] == "open" and r["avg_logprob"] is not None]
        under = sum(1 for r in open_ if r["avg_logprob"] < args.threshold)
        print(f"  {kind}s: {under} of {len(open_)}")
    OUT.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threshold": args.threshold, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
