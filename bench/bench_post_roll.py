"""How much real silence must a turn's audio end with before Whisper hears its last word?

    python bench/bench_post_roll.py                 # 32 questions x 4 voices, tiny.en
    python bench/bench_post_roll.py --voices en-gb+m1 --model base

Recognition of a paused turn begins when the VAD's post-roll is complete, so the post-roll is time
every answer waits. Each question (tests/spoken_sets.py, espeak-ng voices unlike the avatar's) goes
through the server's VAD (models/vad.py) with silence after it; the audio of its last SpeechPause
(the one the end of turn would carry) is recognised with each tail below and compared, word for
word, with the transcript of the old tail of 160 ms heard:

    heard 160 ms          five 32 ms frames of real silence (the post-roll until this bench)
    heard 96 + zeros 64   three frames, then 64 ms of digital silence (the default now)
    heard 96              three frames alone (what lost "France": "capital and friends")
    heard 64 + zeros 96   two frames, then zeros

"same" counts transcripts equal to the 160 ms one; "last word missed" counts questions whose last
word is not among the transcript's last two; "paused inside" counts questions in which the VAD
also paused mid-sentence (recognition begun there is thrown away when the user goes on: wasted work). Writes bench/out/post_roll.json (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

from models.asr import SpeechRecognizer  # noqa: E402
from models.vad import SAMPLE_RATE, SpeechPause, VoiceActivityDetector  # noqa: E402
from tests.speech_samples import espeak  # noqa: E402
from tests.spoken_sets import QUESTIONS, VOICES, words  # noqa: E402

TAILS = {  # name: (post-roll heard, zeros after it), ms
    "heard 160": (160.0, 0.0),
    "heard 96 + zeros 64": (96.0, 64.0),
    "heard 96": (96.0, 0.0),
    "heard 64 + zeros 96": (64.0, 96.0),
}
REFERENCE = "heard 160"


def pauses(detector: VoiceActivityDetector, speech: np.ndarray, heard_ms: float, zeros_ms: float) -> list[SpeechPause]:
    """The SpeechPauses of one spoken question with this tail (the last one is the end of the turn)."""
    stream = detector.stream(post_roll_ms=heard_ms, post_roll_pad_ms=zeros_ms, pause_ms=heard_ms,
                             end_silence_ms=2000)
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    return [e for e in stream.push(audio) if isinstance(e, SpeechPause)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", nargs="+", default=[*VOICES, "en-us+m1"])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", type=Path, default=OUT / "post_roll.json")
    args = parser.parse_args()
    asr = SpeechRecognizer(args.model, language="en", cpu_threads=1)
    asr.warmup()
    detector = VoiceActivityDetector()
    counts = {name: {"same": 0, "last_word_missed": 0, "paused_inside": 0, "questions": 0} for name in TAILS}
    differing = []
    for voice in args.voices:
        for question in QUESTIONS:
            speech = espeak(question, voice)
            found = {name: pauses(detector, speech, *tail) for name, tail in TAILS.items()}
            heard = {name: asr.transcribe(found[name][-1].audio).text.strip() for name in TAILS}
            for name, text in heard.items():
                c = counts[name]
                c["paused_inside"] += len(found[name]) > 1
                c["questions"] += 1
                c["same"] += text == heard[REFERENCE]
                c["last_word_missed"] += words(question)[-1] not in words(text)[-2:]
                if text != heard[REFERENCE]:
                    differing.append({"voice": voice, "question": question, "tail": name,
                                      "reference": heard[REFERENCE], "heard": text})
        print(f"  {voice}: done", flush=True)
    print(f"{'tail':22s} {'same':>8s} {'last word missed':>17s} {'paused inside':>14s}   ({args.model}, "
          f"{len(args.voices)} voices)")
    for name, c in counts.items():
        n = c["questions"]
        print(f"{name:22s} {c['same']:>3d}/{n:<4d} {c['last_word_missed']:>8d}/{n:<8d} {c['paused_inside']:>5d}/{n}")
    for d in differing:
        if d["tail"] != "heard 96":
            print(f"  {d['tail']}: {d['voice']} {d['question']!r}: {d['reference']!r} -> {d['heard']!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "voices": args.voices, "tails_ms": TAILS,
                                    "counts": counts, "differing": differing}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
