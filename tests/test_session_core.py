"""The session core with no transport (fast tier): outputs come and go as parts, closing stops
each one once, and a viseme-mode session sends each chunk's mouth cues before its first frame,
on the media time of its audio. The renderer is the real CueRenderer (it draws nothing)."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pytest

from models.lipsync.cues import CueRenderer
from models.speech import PhonemeTiming, SpeechChunk
from rtc_server.config import Config
from rtc_server.outputs.base import Output, OutputError
from rtc_server.session import Session

CONFIG = Config(fps=25, sample_rate=16_000, max_queued_utterances=4)
SPT = CONFIG.samples_per_tick


class Recorded(Output):
    """An output that records what the session did with it (and can refuse to open)."""

    type = "recorded"

    def __init__(self, log: list[str], refuse: bool = False, finishes: bool = False) -> None:
        super().__init__()
        self.log, self.refuse, self.finishes = log, refuse, finishes

    async def open(self, session) -> None:
        await super().open(session)
        self.log.append(f"open {self.id}")
        if self.refuse:
            raise OutputError("no")

    async def stop(self) -> None:
        self.log.append(f"stop {self.id}")
        await super().stop()
        if self.finishes:
            self.state = "finished"


class TwoChunkVoice:
    """Each text as two chunks of 0.3 s (the second starts while the first still plays), each
    with two phonemes: /p/ then /a/."""

    def synthesize(self, text: str) -> Iterator[SpeechChunk]:
        for _ in range(2):
            audio = np.full(int(0.3 * CONFIG.sample_rate) - 100, 800, np.int16)  # not a whole number of ticks
            yield SpeechChunk(text=text, audio=audio, sample_rate=CONFIG.sample_rate,
                              phonemes=(PhonemeTiming("p", 0.0, 0.1), PhonemeTiming("a", 0.1, 0.3)))


@pytest.fixture
async def session():
    with ThreadPoolExecutor(1) as executor:
        s = Session(CONFIG, TwoChunkVoice(), CueRenderer(CONFIG.fps), executor, listener=None)
        yield s
        await s.close()


async def test_outputs_are_parts_that_come_and_go_and_close_stops_each_once(session):
    log: list[str] = []
    first = await session.add_output(Recorded(log))
    with pytest.raises(OutputError):
        await session.add_output(Recorded(log, refuse=True))
    assert list(session.outputs) == [first.id]  # a refused output is stopped and not kept
    recording = await session.add_output(Recorded(log, finishes=True))
    assert await session.remove_output(recording.id)
    assert session.outputs[recording.id].state == "finished"  # a finished recording stays listed
    assert not await session.remove_output("nothing-here")
    session.start()
    await session.close()
    assert session.closed and not session.task_count
    stops = [line for line in log if line.startswith("stop")]
    assert stops.count(f"stop {first.id}") == 1 and len(stops) == 4  # the refused one, twice the recording
    with pytest.raises(RuntimeError):
        await session.add_output(Recorded(log))


async def test_viseme_cues_come_before_their_chunk_and_on_its_media_time(session):
    sent: list[dict] = []
    session.events.send = sent.append  # what would go to every channel, in order
    session.start()
    uid = session.say("pa pa")
    for _ in range(200):
        if any(e["type"] == "speech_end" for e in sent):
            break
        await asyncio.sleep(0.02)
    kinds = [e["type"] for e in sent if e["type"] in ("visemes", "speech_start", "speech_end")]
    assert kinds[0] == "visemes" and kinds[-1] == "speech_end" and kinds.count("speech_start") == 1, kinds
    chunks = [e for e in sent if e["type"] == "visemes"]
    assert len(chunks) == 2 and all(e["utterance_id"] == uid for e in chunks)
    first, second = chunks
    # The second chunk starts where the first one's whole ticks end (8 ticks of 0.32 s).
    assert round(second["start"] - first["start"], 3) == 0.32
    for chunk in chunks:
        cues = chunk["cues"]
        assert [c["v"] for c in cues] == ["PP", "aa"]
        assert cues[0]["start"] == chunk["start"] and cues[1]["start"] == round(chunk["start"] + 0.1, 3)
        assert cues[1]["end"] <= chunk["start"] + 0.32 and cues[0]["id"] == 1 and cues[1]["id"] == 10
