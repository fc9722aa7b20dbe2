"""PiperTTS with the real en_US-joe-medium voice."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.lead_phrase import split_lead
from models.speech import VOICE_LEVEL, SpeechChunk, tighten
from models.tts import PiperTTS

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("piper-cache")


@pytest.fixture(scope="module")
def tts(cache_dir: Path) -> PiperTTS:
    return PiperTTS(cache_dir=cache_dir)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def test_sentence_audio_matches_phoneme_timings(tts: PiperTTS) -> None:
    chunks = list(tts.synthesize("Hello there, it is nice to meet you."))
    assert len(chunks) == 1
    chunk = chunks[0]
    assert isinstance(chunk, SpeechChunk)
    assert chunk.text == "Hello there, it is nice to meet you."
    assert chunk.sample_rate == 48000 == tts.sample_rate
    assert tts.native_sample_rate == 22050
    assert chunk.audio.dtype == np.int16 and chunk.audio.ndim == 1
    assert chunk.phonemes is not None and len(chunk.phonemes) > 20
    assert abs(chunk.duration - chunk.phonemes[-1].end) < 0.05
    assert chunk.duration > 1.0
    assert _rms(chunk.audio) > 1000.0  # normalised speech, far above silence


def test_phonemes_are_monotonic_and_keep_piper_symbols(tts: PiperTTS) -> None:
    (chunk,) = tts.synthesize("Bob met Pam by the pool.")
    phonemes = chunk.phonemes
    assert phonemes is not None
    assert phonemes[0].start == 0.0
    for prev, cur in zip(phonemes, phonemes[1:]):
        assert cur.start == pytest.approx(prev.end, abs=1e-9)
        assert cur.end >= cur.start
    symbols = [p.phoneme for p in phonemes]
    # Piper's sentence markers, stress marks, spaces and punctuation all survive.
    assert symbols[0] == "^" and symbols[-1] == "$"
    for kept in ("ˈ", " ", ".", "b", "m", "p"):
        assert kept in symbols


def test_two_sentences_give_two_chunks(tts: PiperTTS) -> None:
    chunks = list(tts.synthesize("The sun is up. Where are you going?"))
    assert [c.text for c in chunks] == ["The sun is up.", "Where are you going?"]
    for chunk in chunks:
        assert chunk.phonemes is not None
        assert abs(chunk.duration - chunk.phonemes[-1].end) < 0.05
        assert _rms(chunk.audio) > 1000.0


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_rejected(tts: PiperTTS, text: str) -> None:
    with pytest.raises(ValueError, match="empty text"):
        list(tts.synthesize(text))


def test_concurrent_sessions_get_their_own_speech(tts: PiperTTS) -> None:
    texts = ["Bob met Pam by the pool.", "Five vivid faves, if you please."]
    expected = [[p.phoneme for p in next(iter(tts.synthesize(t))).phonemes] for t in texts]
    jobs = [0, 1, 0, 1]  # two sessions per text, all at once
    results: list[list[SpeechChunk] | BaseException | None] = [None] * len(jobs)

    def work(slot: int) -> None:
        try:
            results[slot] = list(tts.synthesize(texts[jobs[slot]]))
        except BaseException as error:  # reported by the asserts below
            results[slot] = error

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for slot, chunks in enumerate(results):
        assert isinstance(chunks, list), chunks
        assert len(chunks) == 1
        assert chunks[0].text == texts[jobs[slot]]
        assert [p.phoneme for p in chunks[0].phonemes] == expected[jobs[slot]]
        assert abs(chunks[0].duration - chunks[0].phonemes[-1].end) < 0.05


def test_other_output_rate(cache_dir: Path) -> None:
    tts16 = PiperTTS(cache_dir=cache_dir, sample_rate=16000)
    (chunk,) = tts16.synthesize("Good morning.")
    assert chunk.sample_rate == 16000
    assert abs(chunk.duration - chunk.phonemes[-1].end) < 0.05


def test_patched_model_is_cached_and_reused(tts: PiperTTS, cache_dir: Path) -> None:
    cached = tts.model_source
    assert cached is not None and cached.parent == cache_dir and cached.is_file()
    assert cached == tts.cache.cached_path(tts.voice_path)
    mtime = cached.stat().st_mtime_ns
    again = PiperTTS(cache_dir=cache_dir)
    assert again.model_source == cached
    assert cached.stat().st_mtime_ns == mtime  # loaded, not rewritten
    assert [p.name for p in cache_dir.iterdir()] == [cached.name]  # no partial files left
    (chunk,) = again.synthesize("Cached voice.")
    assert chunk.phonemes is not None


def test_missing_voice_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        PiperTTS(voice_path=missing, cache_dir=tmp_path)


def _longest_quiet_run(audio: np.ndarray, rate: int, floor: float = 300.0) -> float:
    """Longest stretch (s) of 5 ms windows quieter than `floor` RMS."""
    win = rate // 200
    frames = audio[: len(audio) // win * win].astype(np.float64).reshape(-1, win)
    quiet = np.sqrt((frames**2).mean(axis=1)) < floor
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best * win / rate


def test_a_sentence_said_as_lead_and_rest_loses_the_sentence_pause_at_the_join(tts: PiperTTS) -> None:
    text = "Your package should arrive on Friday afternoon."
    lead, rest = split_lead(text, 4)
    assert (lead, rest) == ("Your package should arrive", "on Friday afternoon.")
    (whole,) = tts.synthesize(text)
    (first,) = tts.synthesize(lead)
    (second,) = tts.synthesize(rest)

    def join_gap(a: SpeechChunk, b: SpeechChunk) -> float:
        """Longest quiet stretch within 200 ms either side of where a ends and b starts."""
        n = int(0.2 * 48000)
        return _longest_quiet_run(np.concatenate([a.audio[-n:], b.audio[:n]]), 48000)

    loose = join_gap(first, second)
    tight_first, tight_second = tighten(first, tail=True), tighten(second, head=True)
    # 20 ms is left before the second phrase's first sound (-50 dBFS and up), which Piper's "^" mark only
    # approximates; the first phrase keeps 20 ms after its "$" mark or its last sound, whichever is later.
    sound = VOICE_LEVEL
    after_last = len(tight_first.audio) - 1 - np.flatnonzero(np.abs(tight_first.audio.astype(np.int32)) >= sound)[-1]
    before_first = np.flatnonzero(np.abs(tight_second.audio.astype(np.int32)) >= sound)[0]
    assert after_last / 48000 >= 0.015  # less the 5 ms fade
    assert tight_first.duration >= min(first.duration, first.phonemes[-1].start + 0.02) - 1e-3
    assert before_first / 48000 == pytest.approx(0.02, abs=0.006)
    assert tight_second.phonemes[0].phoneme == "^"
    # What went was silence, and the quiet stretch at the join shrank by as much.
    removed = [first.audio[len(tight_first.audio):], second.audio[: len(second.audio) - len(tight_second.audio)]]
    for part in removed:
        assert len(part) == 0 or np.abs(part.astype(np.int32)).max() < sound
    removed_s = sum(len(part) for part in removed) / 48000
    assert removed_s > 0.01, "the sentence pause at the join was cut"
    assert join_gap(tight_first, tight_second) <= loose - removed_s + 0.015  # 5 ms windows, fades
    first, second = tight_first, tight_second
    joined = len(first.audio) + len(second.audio)
    # Two phrases run a little longer than one sentence (phrase-final lengthening; Piper varies)
    assert abs(joined - len(whole.audio)) / 48000 < 0.5
    for chunk in (first, second):
        assert abs(chunk.duration - chunk.phonemes[-1].end) < 0.01
        assert chunk.phonemes[0].start == 0.0
    assert first.phonemes[0].phoneme == "^" and first.phonemes[-1].phoneme == "$"
    assert second.phonemes[-1].phoneme == "$"
    assert [p.phoneme for p in second.phonemes[1:]] == [p.phoneme for p in next(iter(tts.synthesize(rest))).phonemes[1:]]
