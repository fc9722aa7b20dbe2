"""Speech recognition quality and speed per embedded Whisper model, on spoken questions.

    python bench/bench_asr.py                       # tiny.en and base, 32 questions x 3 voices
    python bench/bench_asr.py --models tiny.en --voices en-us+m3
    python bench/bench_asr.py --threads 0           # CTranslate2's own thread count

Each question (tests/spoken_sets.py) is spoken by espeak-ng voices unlike the avatar's, with the
silence the VAD would keep around it (200 ms before, 160 ms after), and recognised as one turn
the way the server does (models/asr.SpeechRecognizer, greedy, short window). Word error rate is
jiwer's over all questions of a voice, on lower-case words with digits written out; "last
word missed" counts questions whose last word is not among the transcript's last two (misheard or
dropped: "capital and friends"). The time is the
recognition's wall time on this machine (the ASR stage inside a turn). Smart Turn v3, which judges the
end of turn beside the recognition, is timed on the same clips. Writes bench/out/asr.json (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
from models.asr import EMBEDDED_MODELS, SpeechRecognizer  # noqa: E402
from tests.speech_samples import espeak  # noqa: E402
from tests.spoken_sets import QUESTIONS, VOICES, normalise, words  # noqa: E402


def turn_audio(text: str, voice: str) -> np.ndarray:
    audio = espeak(text, voice)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[loud[0]: loud[-1] + 1]
    return np.concatenate([np.zeros(3200, np.float32), audio, np.zeros(2560, np.float32)])


def measure(model: str, voices: list[str], questions: list[str], threads: int) -> dict:
    import jiwer

    start = time.perf_counter()
    asr = SpeechRecognizer(model, language="en", cpu_threads=threads)
    asr.warmup()
    loaded_s = time.perf_counter() - start
    per_voice = {}
    times = []
    for voice in voices:
        refs, hyps, missed, rows = [], [], 0, []
        for question in questions:
            audio = turn_audio(question, voice)
            t0 = time.perf_counter()
            text = asr.transcribe(audio).text
            times.append((time.perf_counter() - t0) * 1000)
            ref, hyp = normalise(question), normalise(text)
            refs.append(ref)
            hyps.append(hyp or "<none>")
            if words(question)[-1] not in words(text)[-2:]:
                missed += 1
            rows.append({"question": question, "heard": text})
        wer = jiwer.wer(refs, hyps)
        per_voice[voice] = {"wer": round(wer, 4), "last_word_missed": missed, "questions": len(questions), "heard": rows}
        print(f"  {model:8s} {voice:10s} WER {wer:6.1%}  last word missed {missed}/{len(questions)}", flush=True)
    all_wer = statistics.mean(v["wer"] for v in per_voice.values())
    ms = np.array(times)
    result = {"model": model, "threads": threads, "load_s": round(loaded_s, 2), "wer_mean": round(all_wer, 4),
              "asr_ms_p50": round(float(np.percentile(ms, 50)), 1), "asr_ms_p95": round(float(np.percentile(ms, 95)), 1),
              "voices": per_voice}
    print(f"  {model:8s} mean WER {all_wer:.1%}; recognition p50 {result['asr_ms_p50']:.0f} ms, "
          f"p95 {result['asr_ms_p95']:.0f} ms per question (load {loaded_s:.1f} s)", flush=True)
    return result


def measure_smart_turn(voices: list[str], questions: list[str]) -> dict:
    """Smart Turn v3's time on the same turns: it runs beside the recognition at each pause (one thread)."""
    from models.turn import SmartTurnModel

    model = SmartTurnModel()
    model.warmup()
    times = []
    for voice in voices:
        for question in questions:
            audio = turn_audio(question, voice)
            t0 = time.perf_counter()
            model.probability(audio)
            times.append((time.perf_counter() - t0) * 1000)
    ms = np.array(times)
    result = {"smart_turn_ms_p50": round(float(np.percentile(ms, 50)), 1),
              "smart_turn_ms_p95": round(float(np.percentile(ms, 95)), 1)}
    print(f"  Smart Turn v3 (end of turn, beside recognition): p50 {result['smart_turn_ms_p50']:.0f} ms, "
          f"p95 {result['smart_turn_ms_p95']:.0f} ms per question", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(EMBEDDED_MODELS))
    parser.add_argument("--voices", nargs="+", default=list(VOICES))
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--threads", type=int, default=1 if (os.cpu_count() or 1) <= 2 else 0,
                        help="CTranslate2 threads (default: as the server, 1 on 2 cores; 0: its own choice)")
    parser.add_argument("--out", type=Path, default=OUT / "asr.json")
    args = parser.parse_args()
    questions = list(QUESTIONS[: args.questions])
    print(f"{len(questions)} questions x {len(args.voices)} voices, {os.cpu_count()} cores", flush=True)
    results = [measure(m, args.voices, questions, args.threads) for m in args.models]
    smart_turn = measure_smart_turn(args.voices, questions)
    OUT.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"models": results, **smart_turn}, indent=1))
    print(f"{'model':8s} {'WER':>7s} {'missed':>6s} {'p50 ms':>7s} {'p95 ms':>7s}")
    for r in results:
        missed = sum(v["last_word_missed"] for v in r["voices"].values())
        total = sum(v["questions"] for v in r["voices"].values())
        print(f"{r['model']:8s} {r['wer_mean']:7.1%} {missed:>3d}/{total:<3d} {r['asr_ms_p50']:7.0f} {r['asr_ms_p95']:7.0f}")


if __name__ == "__main__":
    main()
