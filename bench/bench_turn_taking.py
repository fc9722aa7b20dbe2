"""Turns cut off mid-sentence: sentences with a pause inside, per end-of-turn detector.

    python bench/bench_turn_taking.py                          # smart and silence, 10 sentences x 4 pauses
    python bench/bench_turn_taking.py --detectors smart --voices en-us+f3 en-gb+m1
    python bench/bench_turn_taking.py --detectors smart --server-arg=--turn-unsure-wait-ms=300

Each sentence of tests/spoken_sets.PAUSED is spoken by espeak-ng in one breath with an SSML
break of 300, 500, 700 or 900 ms between its halves (the real silence is measured and
printed), into a real aiortc client's microphone, against the server as a subprocess
(`run.py --llm echo --turn-detector D`; `--llm local` with --llm). A trial is cut off when the
sentence became two turns (two final transcripts), when the avatar began to speak before the
user's last turn, or when no final transcript came at all. An end of turn taken back because the
user went on before its answer was heard (--turn-resume-ms) is not a cut: the client saw one turn. For whole turns the server's own record gives the end-of-turn verdict and the
wait from the end of speech to the end of turn.

Voice-to-voice latency (end of the question to the first avatar audio, with the end-of-turn
wait as its own stage) is bench/bench_voice_latency.py, with --server-arg=--turn-detector=D;
in Chromium, bench/bench_browser.py --v2v-server-arg=--turn-detector=D.

Writes bench/out/turn_taking.json (--out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, LightClient, ServerProcess  # noqa: E402
from tests.speech_samples import mic_pcm  # noqa: E402
from tests.spoken_sets import PAUSED, PAUSES_MS, paused_sentence, words  # noqa: E402

RATE = 48_000


async def trial(client: LightClient, pcm: np.ndarray, last_word: str) -> dict:
    seen = len(client.events)
    _, body = await client.request("GET", f"/sessions/{client.session_id}")
    before = {t.get("end_of_turn") for t in body.get("turns") or []}
    client.mic.play(pcm)
    play_s = len(pcm) / RATE
    deadline = time.monotonic() + play_s + 6.0
    # Until the whole sentence is answered: a final reply whose transcript has the last word, then quiet.
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        events = [e for _, e in client.events[seen:]]
        transcripts = [e for e in events if e.get("type") == "transcript" and e.get("final")]
        if any(last_word in words(t["text"]) for t in transcripts) and any(
                e.get("type") == "reply" and e.get("final") for e in events[events.index(transcripts[-1]):]):
            break
    # Let the answer finish speaking before the next trial (the local model says up to three sentences).
    quiet_by = time.monotonic() + 20.0
    while time.monotonic() < quiet_by:
        events = [e for _, e in client.events[seen:]]
        starts = sum(1 for e in events if e.get("type") == "speech_start")
        ends = sum(1 for e in events if e.get("type") == "speech_end")
        if starts and ends >= starts:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    events = [e for _, e in client.events[seen:]]
    final = [i for i, e in enumerate(events) if e.get("type") == "transcript" and e.get("final")]
    transcripts = [events[i]["text"] for i in final]
    spoken = [i for i, e in enumerate(events) if e.get("type") == "speech_start"]
    heard_last = bool(transcripts) and last_word in words(transcripts[0])
    _, body = await client.request("GET", f"/sessions/{client.session_id}")
    turns = [t for t in body.get("turns") or [] if t.get("end_of_turn") not in before] or [{}]
    turn = turns[-1]
    # Cut off: the sentence became two turns, or the avatar began to answer before the user's last turn
    # (the second half talked over it), or nothing of the sentence came through. A misheard last word in
    # one turn ("capital of Friends") is not a cut; nor is an end of turn taken back before anything of
    # its answer was heard (ends_withdrawn).
    cut = len(final) != 1 or any(i < final[-1] for i in spoken)
    return {"transcripts": transcripts, "answers_begun": len(spoken), "cut_off": cut,
            "ends_withdrawn": turn.get("ends_withdrawn"), "last_word_heard": heard_last,
            "verdict": turn.get("turn_verdict"), "reason": turn.get("turn_reason"),
            "probability": turn.get("turn_probability"), "ended_by": turn.get("ended_by"),
            "end_of_turn_wait_ms": (turn.get("stages_ms") or {}).get("end_of_turn_wait"),
            # Every turn the sentence became (a cut's first half: how its end was judged).
            "turns": [{k: t.get(k) for k in ("user_text", "turn_verdict", "turn_reason", "turn_probability",
                                             "ended_by", "silence_heard_ms")} for t in turns]}


async def run_detector(detector: str, voices: list[str], pauses: list[int], sentences: int,
                       server_args: list[str], llm: str) -> dict:
    server = ServerProcess(f"turns-{detector}", ["--llm", llm, "--turn-detector", detector, *server_args])
    await server.start()
    rows = []
    try:
        client = LightClient(server.url)
        await client.connect()
        await client.wait_media()
        await asyncio.sleep(1.0)
        for voice in voices:
            for first, second in PAUSED[:sentences]:
                for pause in pauses:
                    audio, gap_ms = paused_sentence(first, second, pause, voice)
                    result = await trial(client, mic_pcm(audio), words(second)[-1])
                    result.update(voice=voice, sentence=f"{first} | {second}", pause_ms=pause, gap_ms=round(gap_ms))
                    rows.append(result)
                    print(f"  {detector:7s} {voice:9s} {pause:4d} ms (real {gap_ms:4.0f})  "
                          f"{'CUT ' if result['cut_off'] else 'whole'}  withdrawn {result['ends_withdrawn']}  "
                          f"{result['transcripts']}", flush=True)
        await client.close()
    finally:
        server.stop()
    by_pause = {}
    for pause in pauses:
        these = [r for r in rows if r["pause_ms"] == pause]
        by_pause[pause] = {"trials": len(these), "cut_off": sum(r["cut_off"] for r in these)}
    return {"detector": detector, "llm": llm, "server_args": server_args, "by_pause": by_pause, "trials": rows}


async def main_async(args) -> None:
    results = []
    for detector in args.detectors:
        print(f"--turn-detector {detector}:", flush=True)
        results.append(await run_detector(detector, args.voices, args.pauses, args.sentences, args.server_arg,
                                          args.llm))
    OUT.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("cut off mid-sentence, by pause length:")
    print(f"{'detector':9s} " + " ".join(f"{p:>9d}ms" for p in args.pauses))
    for r in results:
        print(f"{r['detector']:9s} " + " ".join(f"{b['cut_off']:>5d}/{b['trials']:<5d}" for b in r["by_pause"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=["smart", "silence"])
    parser.add_argument("--voices", nargs="+", default=["en-us+f3"])
    parser.add_argument("--pauses", nargs="+", type=int, default=list(PAUSES_MS))
    parser.add_argument("--sentences", type=int, default=len(PAUSED))
    parser.add_argument("--llm", choices=["echo", "local"], default="echo",
                        help="the reply model: echo answers at once (the hardest case for taking an end back)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra run.py argument (repeatable), e.g. --server-arg=--turn-unsure-wait-ms=300")
    parser.add_argument("--out", type=Path, default=OUT / "turn_taking.json")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
