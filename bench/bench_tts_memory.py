"""Peak memory of one long text without punctuation through Piper: whole, and in the speaker's
pieces (models/lead_phrase.bounded_pieces).

    python bench/bench_tts_memory.py whole
    python bench/bench_tts_memory.py pieces

Each run is its own process (peak RSS, ru_maxrss, only grows): run both and compare.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.lead_phrase import bounded_pieces  # noqa: E402
from models.tts import PiperTTS  # noqa: E402


def main() -> None:
    how = sys.argv[1] if len(sys.argv) > 1 else "pieces"
    tts = PiperTTS()
    list(tts.synthesize("Warm up."))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = ("we walked along the river and talked about the weather " * 36)[:2000]
    pieces = [text] if how == "whole" else bounded_pieces(text)
    for piece in pieces:
        for _ in tts.synthesize(piece):
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{how}: {len(pieces)} piece(s), peak RSS +{peak - base:.0f} MB over the warmed-up voice")


if __name__ == "__main__":
    main()
