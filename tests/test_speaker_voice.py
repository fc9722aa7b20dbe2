"""The Speaker with the real Piper voice: an answer is heard from its first frame on."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.speech import SpeechChunk
from models.tts import PiperTTS
from rtc_server.speaker import Speaker, one_text
from tracks.frame_queue import FrameQueue

pytestmark = pytest.mark.slow

RATE = 16_000
FPS = 25
SPT = RATE // FPS
WINDOW = RATE // 200  # 5 ms


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


def loud(audio: np.ndarray) -> np.ndarray:
    """Per 5 ms window: does it reach -30 dBFS (speech, not a fade or dither)."""
    n = len(audio) // WINDOW
    peaks = np.abs(audio[: n * WINDOW].astype(np.int32)).reshape(n, WINDOW).max(axis=1)
    return peaks >= 32768 * 10 ** (-30 / 20)


async def utterance_audio(voice: PiperTTS, text: str) -> np.ndarray:
    """The voice of every frame the Speaker queues for `text`, as the clock would play it."""
    queue = FrameQueue(500)
    with ThreadPoolExecutor(1) as executor:
        speaker = Speaker(voice=voice, renderer=BlankRenderer(), queue=queue, executor=executor,
                          samples_per_tick=SPT, next_tick=lambda: 0, lead_words=3)
        await speaker.speak("u1", one_text(text))
    return np.concatenate([queue.get_nowait().audio for _ in range(len(queue))])


# Piper opens each of these with a pause of 25-400 ms (it varies from call to call); what is left
# is 20 ms kept before the first sound and that sound's own rise (a soft /w/ or /h/: 10-20 ms).
@pytest.mark.parametrize("text", ["What time is it?", "Sure! Here is a joke for you.",
                                  "The capital of France is Paris.", "Hello there, how can I help?"])
async def test_an_answer_is_heard_from_its_first_frame(voice: PiperTTS, text: str) -> None:
    audio = await utterance_audio(voice, text)
    onset_ms = int(np.argmax(loud(audio))) * 5
    assert onset_ms <= 40, f"{text!r}: the voice starts {onset_ms} ms into the answer"
