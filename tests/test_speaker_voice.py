"""The Speaker with the real Piper voice: an answer is heard from its first frame on."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.speech import VOICE_LEVEL as SOUND, SpeechChunk
from models.tts import PiperTTS
from rtc_server.speaker import Speaker, one_text
from tracks.frame_queue import FrameQueue

pytestmark = pytest.mark.slow

RATE = 16_000
FPS = 25
SPT = RATE // FPS


class BlankRenderer:
    """One blank picture per tick of voice: only the audio is under test."""

    width, height, fps = 4, 4, FPS

    def idle_frame(self, tick: int) -> np.ndarray:
        return np.zeros((4, 4), np.uint8)

    def begin(self, chunk: SpeechChunk, tick: int):
        class Source:
            n_frames = -(-len(chunk.audio) // SPT)

            def render(self, start: int, count: int) -> list[np.ndarray]:
                return [np.zeros((4, 4), np.uint8)] * count

        return Source()


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> PiperTTS:
    return PiperTTS(sample_rate=RATE, cache_dir=tmp_path_factory.mktemp("piper-cache"))


class RecordingVoice:
    """The real voice, keeping every chunk it made: Piper varies its pauses from call to call."""

    def __init__(self, voice: PiperTTS) -> None:
        self.voice = voice
        self.chunks: list[SpeechChunk] = []

    def synthesize(self, text: str):
        for chunk in self.voice.synthesize(text):
            self.chunks.append(chunk)
            yield chunk


def first_sound(audio: np.ndarray) -> int:
    """Index of the first sample at -50 dBFS or louder."""
    return int(np.argmax(np.abs(audio.astype(np.int32)) >= SOUND))


def offset_in(source: np.ndarray, audio: np.ndarray, skip: int = RATE // 200) -> int:
    """Where in `source` `audio` starts (its first `skip` samples may be faded in)."""
    probe = audio[skip: skip + RATE // 50]
    windows = np.lib.stride_tricks.sliding_window_view(source, len(probe))
    found = np.flatnonzero((windows == probe).all(axis=1))
    assert found.size, "the answer does not open with the voice's own audio"
    return int(found[0]) - skip


async def utterance_audio(voice: RecordingVoice, text: str) -> np.ndarray:
    """The voice of every frame the Speaker queues for `text`, as the clock would play it."""
    queue = FrameQueue(500)
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=voice, renderer=BlankRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0, lead_words=3)
        await speaker.speak("u1", one_text(text))
    return np.concatenate([queue.get_nowait().audio for _ in range(len(queue))])


@pytest.mark.parametrize("text", ["What time is it?", "Hello there, how can I help?",
                                  "The capital of France is Paris.", "Can you tell me about the moon?"])
async def test_an_answer_is_heard_from_its_first_frame(voice: PiperTTS, text: str) -> None:
    """Piper opens every sentence with a pause (its "^", 25-400 ms, different on every call). Before the
    answer's first words only 20 ms of it is left, and nothing of the voice goes with the rest."""
    recording = RecordingVoice(voice)
    audio = await utterance_audio(recording, text)
    opening = recording.chunks[0].audio
    cut = offset_in(opening, audio)
    assert cut == 0 or np.abs(opening[:cut].astype(np.int32)).max() < SOUND, "what was cut was silence"
    heard_ms = first_sound(audio) / RATE * 1000
    assert heard_ms <= 21, (f"{text!r}: the voice starts {heard_ms:.0f} ms into the answer (Piper's own "
                            f"opening: {first_sound(opening) / RATE * 1000:.0f} ms)")
