"""Mouth articulation parameters: the vocabulary between visemes and renderers.

Each video frame of speech has one value in [0, 1] per parameter, in this order.
"""
from __future__ import annotations

MOUTH_PARAMS: tuple[str, ...] = (
    "open",   # jaw and lip opening (0 closed at rest, 1 widest vowel)
    "wide",   # lip spread, corners pulled out (ee, s)
    "round",  # lip rounding / pucker, corners pulled in (oo, w, o)
    "press",  # lips pressed together (p, b, m): forces a full closure
    "bite",   # lower lip tucked under the upper teeth (f, v)
)
N_MOUTH_PARAMS = len(MOUTH_PARAMS)
OPEN, WIDE, ROUND, PRESS, BITE = range(N_MOUTH_PARAMS)
