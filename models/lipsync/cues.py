"""Mouth cues for avatars that the client draws: Oculus-15 visemes with start, end and weight,
and a "renderer" that draws nothing, only hands them over (a session in viseme mode).

Cue format (README, "Viseme stream"): {"v": "aa", "id": 10, "start": 1.230, "end": 1.310, "w": 1.0}
on the media time of the session's audio (seconds since the clock's tick 0). Ids follow the
Oculus/Meta OVRLipSync order: 0 sil, 1 PP, 2 FF, 3 TH, 4 DD, 5 kk, 6 CH, 7 SS, 8 nn, 9 RR,
10 aa, 11 E, 12 ih, 13 oh, 14 ou.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.lipsync.mouth import OPEN
from models.lipsync.renderer import FrameSource, LipSyncRenderer
from models.lipsync.visemes import VISEMES, audio_mouth_track, build_timeline
from models.speech import SpeechChunk

OCULUS_IDS = {name: i for i, name in enumerate(VISEMES)}
assert VISEMES[:3] == ("sil", "PP", "FF") and VISEMES[-1] == "ou" and len(VISEMES) == 15


@dataclass(frozen=True)
class MouthCue:
    viseme: str
    start: float   # seconds from the start of its speech chunk
    end: float
    weight: float

    def to_json(self, offset: float) -> dict:
        """The cue on the session's media time (`offset`: the chunk's start)."""
        return {"v": self.viseme, "id": OCULUS_IDS[self.viseme], "start": round(offset + self.start, 3),
                "end": round(offset + self.end, 3), "w": round(self.weight, 2)}


def cues_for(speech: SpeechChunk, fps: int) -> list[MouthCue]:
    """The mouth cues of a chunk: from its phonemes when it has them, else read from the audio
    (how far the mouth opens, as `aa` of that weight, one cue per steady stretch)."""
    if speech.phonemes:
        return [MouthCue(s.viseme, s.start, s.end, s.weight) for s in build_timeline(speech.phonemes)]
    n_frames = math.ceil(round(speech.duration * fps, 6))
    opening = audio_mouth_track(speech.audio, speech.sample_rate, n_frames, fps)[:, OPEN]
    cues: list[MouthCue] = []
    for i, value in enumerate(np.round(opening * 10) / 10):  # steps of 0.1: steady stretches merge
        viseme, weight = ("sil", 0.0) if value < 0.05 else ("aa", float(value))
        start, end = i / fps, (i + 1) / fps
        if cues and cues[-1].viseme == viseme and cues[-1].weight == weight:
            cues[-1] = MouthCue(viseme, cues[-1].start, end, weight)
        else:
            cues.append(MouthCue(viseme, start, end, weight))
    return cues


class CueSource(FrameSource):
    """A chunk's frames (all the same tiny blank picture) and its cues."""

    instant = True

    def __init__(self, n_frames: int, blank: np.ndarray, cues: list[MouthCue]) -> None:
        self.n_frames = n_frames
        self._blank = blank
        self.cues = cues

    def render(self, start: int, count: int) -> list[np.ndarray]:
        return [self._blank] * max(0, min(count, self.n_frames - start))


class CueRenderer(LipSyncRenderer):
    """For sessions whose client draws the avatar: no pixels worth the name (a 16x16 blank frame
    keeps video tracks valid), only cues. Costs next to nothing per tick."""

    still_idle = True  # one blank picture for every idle tick: the session's clock may rest
    draws_face = False

    def __init__(self, fps: int, size: int = 16) -> None:
        self.fps = fps
        self.width = self.height = size
        self._blank = np.zeros((size * 3 // 2, size), dtype=np.uint8)
        self._blank[:size] = 16
        self._blank[size:] = 128

    def idle_frame(self, tick: int) -> np.ndarray:
        return self._blank

    def begin(self, speech: SpeechChunk, tick: int) -> CueSource:
        n_frames = math.ceil(round(speech.duration * self.fps, 6))
        return CueSource(n_frames, self._blank, cues_for(speech, self.fps))
