"""Phonemes and audio to per-frame mouth parameters."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from models.lipsync.mouth import BITE, N_MOUTH_PARAMS, OPEN, PRESS, ROUND, WIDE
from models.lipsync.visemes import (
    PHONEME_VISEMES,
    VisemeSegment,
    audio_mouth_track,
    build_timeline,
    mouth_track,
    openness,
)
from models.speech import PhonemeTiming, SpeechChunk
from models.tts import PiperTTS

FPS = 25
LEAD = 0.04


@pytest.fixture(scope="module")
def tts(tmp_path_factory: pytest.TempPathFactory) -> PiperTTS:
    return PiperTTS(cache_dir=tmp_path_factory.mktemp("piper-cache"))


def _seq(*items: tuple[str, float]) -> list[PhonemeTiming]:
    """Contiguous phonemes from (symbol, duration) pairs."""
    out, t = [], 0.0
    for symbol, duration in items:
        out.append(PhonemeTiming(symbol, t, t + duration))
        t += duration
    return out


def _frames_near(p: PhonemeTiming, fps: int, lead: float, n_frames: int) -> range:
    """Frames whose time is within one frame of the phoneme's (lead-shifted) span."""
    lo = math.floor((p.start - lead - 1.0 / fps) * fps - 0.5)
    hi = math.ceil((p.end - lead + 1.0 / fps) * fps - 0.5)
    return range(max(lo, 0), min(hi, n_frames - 1) + 1)


def _track(chunk: SpeechChunk, fps: int = FPS) -> np.ndarray:
    n = math.ceil(chunk.duration * fps)
    return mouth_track(chunk.phonemes, n, fps, lead=LEAD)


def _closed(row: np.ndarray) -> bool:
    return row[PRESS] >= 0.99 and row[OPEN] <= 0.01


def _bitten(row: np.ndarray) -> bool:
    return row[BITE] >= 0.99


# --- with real Piper phonemes -------------------------------------------------------------

@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.slow
def test_every_bilabial_closes_the_lips(tts: PiperTTS, fps: int) -> None:
    (chunk,) = tts.synthesize("Bob met Pam by the pool, mum.")
    track = _track(chunk, fps)
    bilabials = [p for p in chunk.phonemes if p.phoneme in "pbm"]
    assert len(bilabials) >= 8
    for p in bilabials:
        near = _frames_near(p, fps, LEAD, len(track))
        assert any(_closed(track[i]) for i in near), (p, track[near.start : near.stop])
    # ...and the mouth really opens in between: closures are dips, not a shut mouth.
    assert track[:, OPEN].max() > 0.7


@pytest.mark.slow
def test_every_labiodental_bites(tts: PiperTTS) -> None:
    (chunk,) = tts.synthesize("five vivid faves")
    track = _track(chunk)
    labiodentals = [p for p in chunk.phonemes if p.phoneme in "fv"]
    assert len(labiodentals) == 6
    for p in labiodentals:
        near = _frames_near(p, FPS, LEAD, len(track))
        assert any(_bitten(track[i]) for i in near), (p, track[near.start : near.stop])
    assert (track[:, BITE] < 0.5).sum() > len(track) // 3  # bites are moments, not the whole clip


@pytest.mark.slow
def test_real_sentence_track_is_at_rest_at_both_ends(tts: PiperTTS) -> None:
    (chunk,) = tts.synthesize("Hello there, it is nice to meet you.")
    track = _track(chunk)
    assert track.shape == (math.ceil(chunk.duration * FPS), N_MOUTH_PARAMS)
    assert track.dtype == np.float32
    assert np.all(track[-1] == 0.0)
    assert np.all(track[0] <= 0.5)
    assert track[:, OPEN].max() > 0.7  # "nice" opens wide
    assert track[:, ROUND].max() > 0.7  # "hello", "you" round the lips


# --- hand-made timings ---------------------------------------------------------------------

@pytest.mark.parametrize("fps", [25, 30, 60])
def test_a_10ms_p_still_closes(fps: int) -> None:
    phonemes = _seq(("^", 0.1), ("ɑ", 0.15), ("p", 0.01), ("ɑ", 0.15), (".", 0.3))
    n = math.ceil(phonemes[-1].end * fps)
    track = mouth_track(phonemes, n, fps, lead=LEAD)
    p = phonemes[2]
    near = _frames_near(p, fps, LEAD, n)
    closed = [i for i in near if _closed(track[i])]
    assert closed
    # The vowels on both sides are open.
    t_before = (phonemes[1].start + phonemes[1].end) / 2 - LEAD
    t_after = (phonemes[3].start + phonemes[3].end) / 2 - LEAD
    assert track[int(t_before * fps), OPEN] > 0.5
    assert track[int(t_after * fps), OPEN] > 0.5


def test_p_and_f_sharing_a_frame_both_happen() -> None:
    # "mf" of "triumph"-like clusters: 15 ms each, closer than one frame.
    phonemes = _seq(("^", 0.1), ("ʌ", 0.12), ("m", 0.015), ("f", 0.015), ("ɑ", 0.15), (".", 0.2))
    n = math.ceil(phonemes[-1].end * FPS)
    track = mouth_track(phonemes, n, FPS, lead=LEAD)
    assert any(_closed(r) for r in track)
    assert any(_bitten(r) for r in track)


def test_long_pause_relaxes_to_rest_and_speech_resumes() -> None:
    phonemes = _seq(("^", 0.2), ("ɑ", 0.2), (".", 1.2), ("ɑ", 0.2), ("$", 0.2))
    n = math.ceil(phonemes[-1].end * FPS)
    track = mouth_track(phonemes, n, FPS, lead=LEAD)
    times = (np.arange(n) + 0.5) / FPS
    in_pause = (times > 0.4 + 0.25) & (times < 1.6 - 0.1)
    assert in_pause.sum() >= 15
    assert np.all(track[in_pause] == 0.0)
    assert track[(times > 1.65) & (times < 1.75), OPEN].max() > 0.6
    assert np.all(track[0] == 0.0) and np.all(track[-1] == 0.0)


def test_short_pause_holds_the_mouth() -> None:
    phonemes = _seq(("^", 0.05), ("ɑ", 0.2), (" ", 0.08), ("ɑ", 0.2), ("$", 0.2))
    track = mouth_track(phonemes, math.ceil(0.73 * FPS), FPS, lead=LEAD)
    times = (np.arange(len(track)) + 0.5) / FPS
    gap = (times > 0.25 - LEAD) & (times < 0.33 - LEAD)
    assert track[gap, OPEN].min() > 0.3


def test_values_in_range_and_shape_for_random_input() -> None:
    rng = random.Random(7)
    symbols = list(PHONEME_VISEMES) + list("ˈˌː ,.!?^$_h") + ["\u0329", "aɪ", "tʃ", "ʰ", "ж"]
    for _ in range(30):
        items = [(rng.choice(symbols), rng.uniform(0.0, 0.2)) for _ in range(rng.randint(0, 60))]
        phonemes = _seq(*items)
        n = rng.randint(1, 200)
        fps = rng.choice([15, 25, 30, 60])
        track = mouth_track(phonemes, n, fps, lead=rng.uniform(0.0, 0.1))
        assert track.shape == (n, N_MOUTH_PARAMS) and track.dtype == np.float32
        assert np.all(np.isfinite(track))
        assert track.min() >= 0.0 and track.max() <= 1.0
    assert mouth_track([], 0, FPS).shape == (0, N_MOUTH_PARAMS)
    assert np.all(mouth_track([], 10, FPS) == 0.0)


def test_timeline_rules() -> None:
    segs = build_timeline(
        _seq(("^", 0.1), ("h", 0.05), ("ˈ", 0.04), ("ɑ", 0.1), ("ː", 0.06), (" ", 0.04),
             ("aɪ", 0.1), ("ə", 0.05), (",", 0.2), ("b", 0.05))
    )
    names = [s.viseme for s in segs]
    assert names == ["sil", "aa", "aa", "aa", "ih", "aa", "sil", "PP"]
    sil, h, vowel, diph_a, diph_i, schwa, comma, b = segs
    assert h.weight == pytest.approx(0.6)  # h copies the next vowel at 60 %
    assert vowel.start == pytest.approx(0.15)  # the stress mark's time goes to the vowel
    assert vowel.end == pytest.approx(0.37)  # length mark and half the space too
    assert diph_a.start == pytest.approx(0.37)
    assert diph_a.duration == pytest.approx(0.6 * 0.1 + 0.02)  # 60/40 split, plus half the space
    assert diph_i.duration == pytest.approx(0.04)
    assert schwa.weight < 0.7  # schwa is a reduced vowel
    assert comma.viseme == "sil" and b.viseme == "PP"
    for a, c in zip(segs, segs[1:]):
        assert c.start == pytest.approx(a.end)
    assert all(isinstance(s, VisemeSegment) for s in segs)


def test_openness_orders_vowels_and_closures() -> None:
    assert openness("ɑ") > openness("ɛ") > openness("ɪ") > openness("p") == 0.0
    assert openness("ə") < openness("ɑ")
    assert openness("ˈ") == openness(" ") == openness(".") == 0.0
    assert openness("b") == openness("m") == 0.0
    assert 0.0 < openness("f") < 0.2


# --- audio without phonemes ----------------------------------------------------------------

def _tone(freq: float, seconds: float, sr: int, dbfs: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    amp = 10 ** (dbfs / 20) * math.sqrt(2)  # sine RMS = amp / sqrt(2)
    return amp * np.sin(2 * np.pi * freq * t)


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32767, 32767).astype(np.int16)


def test_audio_track_opens_on_a_loud_burst_and_closes_on_silence() -> None:
    sr = 48000
    audio = _int16(np.concatenate([np.zeros(sr // 2), _tone(400, 0.5, sr, -12), np.zeros(sr)]))
    n = math.ceil(len(audio) / sr * FPS)
    track = audio_mouth_track(audio, sr, n, FPS)
    assert track.shape == (n, N_MOUTH_PARAMS) and track.dtype == np.float32
    times = (np.arange(n) + 0.5) / FPS
    assert np.all(track[times < 0.45] == 0.0)
    assert track[(times > 0.6) & (times < 0.95), OPEN].min() > 0.5
    assert np.all(track[times > 1.6] == 0.0)
    assert track.min() >= 0.0 and track.max() <= 1.0


def test_audio_track_narrows_for_sibilant_noise() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(sr // 2)
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(len(noise), 1 / sr) < 4000] = 0  # keep the hiss only
    hiss = np.fft.irfft(spectrum, len(noise))
    hiss *= 10 ** (-15 / 20) / np.sqrt(np.mean(hiss**2))
    vowel = _tone(600, 0.5, sr, -15)
    n = 12
    hiss_track = audio_mouth_track(_int16(hiss), sr, n, FPS)[4:]
    vowel_track = audio_mouth_track(_int16(vowel), sr, n, FPS)[4:]
    assert hiss_track[:, OPEN].mean() < 0.6 * vowel_track[:, OPEN].mean()
    assert hiss_track[:, WIDE].mean() > vowel_track[:, WIDE].mean()


@pytest.mark.slow
def test_audio_track_of_real_speech_moves(tts: PiperTTS) -> None:
    (chunk,) = tts.synthesize("Hello there, it is nice to meet you.")
    n = math.ceil(chunk.duration * FPS)
    track = audio_mouth_track(chunk.audio, chunk.sample_rate, n, FPS)
    assert track[:, OPEN].max() > 0.6
    assert np.std(track[:, OPEN]) > 0.1  # follows syllables rather than sitting open


def test_mouth_track_rejects_bad_fps() -> None:
    with pytest.raises(ValueError, match="fps"):
        mouth_track(_seq(("a", 0.1)), 5, 0)
    with pytest.raises(ValueError, match="mono"):
        audio_mouth_track(np.zeros((10, 2), np.int16), 16000, 5, FPS)
