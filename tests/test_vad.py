"""Streaming VAD on real speech (espeak-ng), silence, clicks and noise."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.vad import (
    FRAME,
    FRAME_S,
    SpeechDiscarded,
    SpeechEnd,
    SpeechStart,
    VadConfig,
    VoiceActivityDetector,
)
from tests.speech_samples import (
    SAMPLE_RATE,
    click,
    concat,
    espeak,
    rms,
    silence,
    speech_bounds,
    white_noise,
)

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return espeak("What is the capital of France?")


def push_in_chunks(stream, audio: np.ndarray, chunk: int = 320) -> list:
    """Feed audio the way a WebRTC receiver does: 20 ms at a time."""
    events = []
    for i in range(0, audio.size, chunk):
        events += stream.push(audio[i : i + chunk])
    return events


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


def test_silence_gives_no_events(detector):
    stream = detector.stream()
    assert push_in_chunks(stream, silence(3.0)) == []
    assert not stream.in_speech
    assert stream.time == pytest.approx(3.0, abs=FRAME_S)


def test_one_sentence_is_one_turn(detector, sentence):
    lead, tail = 1.0, 1.0
    audio = concat(silence(lead), sentence, silence(tail))
    first, last = speech_bounds(sentence)
    true_start, true_end = lead + first, lead + last
    stream = detector.stream()
    events = push_in_chunks(stream, audio)

    assert kinds(events) == ["SpeechStart", "SpeechEnd"]
    start, end = events
    assert abs(start.t - true_start) < 0.15
    # Barge-in needs the onset soon after speech begins (in stream time, not wall time).
    assert 0 <= start.detected_at - true_start < 0.2
    assert abs(end.t - true_end) < 0.25
    assert end.start == start.t
    # End of turn is declared after end_silence_ms of silence, not before.
    silence_s = stream.config.end_silence_ms / 1000
    assert end.detected_at - end.t == pytest.approx(silence_s, abs=2 * FRAME_S)
    # The utterance holds the whole sentence plus pre-roll, and little else.
    assert end.audio.dtype == np.float32
    expected = (end.t - end.start) + stream.config.pre_roll_ms / 1000
    assert end.audio.size / SAMPLE_RATE == pytest.approx(expected, abs=0.25)
    assert rms(end.audio) > 0.5 * rms(sentence)


def test_chunk_size_and_int16_do_not_change_the_result(detector, sentence):
    audio = concat(silence(0.7), sentence, silence(1.0))
    reference = push_in_chunks(detector.stream(), audio, chunk=320)
    whole = detector.stream().push(audio)
    as_int16 = push_in_chunks(detector.stream(), (audio * 32767).astype(np.int16), chunk=480)
    for events in (whole, as_int16):
        assert kinds(events) == kinds(reference)
        assert [e.t for e in events] == pytest.approx([e.t for e in reference], abs=FRAME_S)


def test_streams_are_independent(detector, sentence):
    """Two sessions interleaved on one detector behave as if each had it alone."""
    speech = concat(silence(0.5), sentence, silence(1.0))
    quiet = silence(speech.size / SAMPLE_RATE)
    a, b = detector.stream(), detector.stream()
    events_a, events_b = [], []
    for i in range(0, speech.size, 320):
        events_a += a.push(speech[i : i + 320])
        events_b += b.push(quiet[i : i + 320])
    assert kinds(events_a) == ["SpeechStart", "SpeechEnd"]
    assert events_b == []


def test_short_click_is_not_a_turn(detector):
    events = push_in_chunks(detector.stream(), concat(silence(1.0), click(60), silence(1.0)))
    assert not any(isinstance(e, SpeechEnd) for e in events)


def test_speech_shorter_than_min_speech_is_discarded(detector, sentence):
    """A burst that trips the onset but stops early ends in SpeechDiscarded, not a turn."""
    stream = detector.stream(min_speech_ms=3000)  # longer than the sentence
    events = push_in_chunks(stream, concat(silence(0.5), sentence, silence(1.0)))
    assert kinds(events) == ["SpeechStart", "SpeechDiscarded"]
    assert isinstance(events[1], SpeechDiscarded)
    assert events[1].start == events[0].t


@pytest.mark.parametrize("level", [0.01, 0.05, 0.2])
def test_steady_white_noise_is_not_a_turn(detector, level):
    # Silero tells hiss from voice; measured: no onset at all for white noise up to rms 0.3.
    events = push_in_chunks(detector.stream(), white_noise(4.0, level, seed=3))
    assert events == []


def test_two_sentences_with_a_long_pause_are_two_turns(detector, sentence):
    second = espeak("Tell me a joke about cats.")
    audio = concat(silence(0.5), sentence, silence(1.5), second, silence(1.0))
    events = push_in_chunks(detector.stream(), audio)
    assert kinds(events) == ["SpeechStart", "SpeechEnd", "SpeechStart", "SpeechEnd"]
    first_end, second_start = events[1], events[2]
    assert second_start.t - first_end.t > 1.0


def test_a_short_pause_does_not_end_the_turn(detector, sentence):
    """A 200 ms breath inside a turn is shorter than end_silence_ms: still one turn."""
    audio = concat(silence(0.5), sentence, silence(0.2), sentence, silence(1.0))
    events = push_in_chunks(detector.stream(end_silence_ms=600), audio)
    assert kinds(events) == ["SpeechStart", "SpeechEnd"]


def test_end_silence_is_configurable(detector, sentence):
    audio = concat(silence(0.5), sentence, silence(2.0))
    quick = push_in_chunks(detector.stream(end_silence_ms=300), audio)[-1]
    patient = push_in_chunks(detector.stream(end_silence_ms=1200), audio)[-1]
    assert isinstance(quick, SpeechEnd) and isinstance(patient, SpeechEnd)
    assert patient.detected_at - quick.detected_at == pytest.approx(0.9, abs=2 * FRAME_S)


def test_max_utterance_forces_an_end(detector, sentence):
    long_speech = concat(*[sentence] * 3)
    stream = detector.stream(max_utterance_s=2.0)
    events = push_in_chunks(stream, concat(silence(0.3), long_speech, silence(1.0)))
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert ends and ends[0].forced
    assert ends[0].t - ends[0].start <= 2.0 + FRAME_S
    assert ends[0].audio.size / SAMPLE_RATE <= 2.0 + 0.5


def test_reset_drops_a_turn_in_progress(detector, sentence):
    stream = detector.stream()
    events = push_in_chunks(stream, concat(silence(0.5), sentence[: sentence.size // 2]))
    assert kinds(events) == ["SpeechStart"] and stream.in_speech
    stream.reset()
    assert not stream.in_speech
    assert push_in_chunks(stream, silence(1.5)) == []


def test_config_defaults_match_the_contract():
    cfg = VadConfig()
    assert cfg.onset_ms < cfg.min_speech_ms
    assert cfg.silence_threshold < cfg.threshold


def test_onset_comes_before_min_speech(detector, sentence):
    """SpeechStart fires after onset_ms, long before the turn reaches min_speech_ms."""
    stream = detector.stream(onset_ms=64, min_speech_ms=500)
    events = push_in_chunks(stream, concat(silence(0.5), sentence, silence(1.0)))
    start = events[0]
    assert isinstance(start, SpeechStart)
    assert start.detected_at - start.t == pytest.approx(2 * FRAME_S)  # 64 ms = two frames
    assert isinstance(events[1], SpeechEnd)


def test_speech_over_background_noise_is_still_one_turn(detector, sentence):
    audio = concat(silence(1.0), sentence, silence(1.5))
    noisy = audio + white_noise(audio.size / SAMPLE_RATE, rms(sentence) / 2, seed=5)  # 6 dB SNR
    events = push_in_chunks(detector.stream(), noisy.astype(np.float32))
    assert kinds(events) == ["SpeechStart", "SpeechEnd"]
    assert abs(events[0].t - (1.0 + speech_bounds(sentence)[0])) < 0.15


def test_a_pause_is_announced_before_the_end_of_turn(detector, sentence):
    """With pause_ms, SpeechPause comes into the silence once the post-roll is complete (here 64 ms
    asked, 96 ms of post-roll), carrying exactly the audio the end of turn will: work begun on it
    hears every word. That audio is the pre-roll, the speech, the post-roll as heard, then 64 ms of
    zeros (the quiet Whisper needs after a last word, not waited for)."""
    audio = np.concatenate([silence(0.3), sentence, silence(0.8)])
    stream = detector.stream(end_silence_ms=320, pause_ms=64)
    events = push_in_chunks(stream, audio)
    _, pause, end = events
    assert pause.t == end.t and pause.start == end.start
    # (a frame between the two thresholds after the last speech frame still counts as speech going on)
    assert 0.096 - 1e-9 <= pause.detected_at - pause.t <= 0.096 + FRAME_S + 1e-9
    assert end.detected_at - pause.detected_at == pytest.approx(0.320 - 0.096, abs=FRAME_S / 2)
    assert np.array_equal(end.audio, pause.audio)
    pre_roll = math.ceil(stream.config.pre_roll_ms / 1000 / FRAME_S) * FRAME_S
    heard = (pause.t - pause.start) + pre_roll + 3 * FRAME_S
    assert 0 <= pause.audio.size - (heard + 0.064) * SAMPLE_RATE <= FRAME, (pause.audio.size, heard)
    assert not pause.audio[-1024:].any()


def test_speech_after_a_pause_resumes_the_turn(detector, sentence):
    audio = concat(silence(0.5), sentence, silence(0.25), sentence, silence(1.0))
    events = push_in_chunks(detector.stream(end_silence_ms=600, pause_ms=96), audio)
    assert kinds(events) == ["SpeechStart", "SpeechPause", "SpeechResume", "SpeechPause", "SpeechEnd"]
    first_pause, resume, last_pause, end = events[1:]
    assert first_pause.t < resume.t < last_pause.t == end.t
    assert last_pause.audio.size > first_pause.audio.size


def test_no_pause_for_speech_too_short_to_be_a_turn_or_without_pause_ms(detector, sentence):
    audio = concat(silence(0.5), sentence, silence(1.0))
    short = push_in_chunks(detector.stream(min_speech_ms=3000, pause_ms=96), audio)
    assert kinds(short) == ["SpeechStart", "SpeechDiscarded"]
    assert kinds(push_in_chunks(detector.stream(), audio)) == ["SpeechStart", "SpeechEnd"]
    late = push_in_chunks(detector.stream(end_silence_ms=300, pause_ms=300), audio)
    assert kinds(late) == ["SpeechStart", "SpeechEnd"]


def test_quick_onset_starts_a_frame_sooner_and_ignores_noise(detector, sentence):
    """quick_onset (barge-in over the avatar) needs one speech frame instead of two."""
    audio = concat(silence(0.5), sentence, silence(1.0))
    normal, quick = detector.stream(), detector.stream()
    quick.quick_onset = True
    start = push_in_chunks(normal, audio)[0]
    fast = push_in_chunks(quick, audio)[0]
    assert isinstance(start, SpeechStart) and isinstance(fast, SpeechStart)
    assert fast.detected_at < start.detected_at
    assert fast.detected_at - fast.t == pytest.approx(FRAME_S)
    # Clicks and hiss at ordinary levels still start nothing.
    for noise in (concat(silence(0.5), click(60), silence(0.5), click(150), silence(0.5)),
                  white_noise(4.0, 0.1, seed=3), white_noise(4.0, 0.2, seed=4)):
        stream = detector.stream()
        stream.quick_onset = True
        assert push_in_chunks(stream, noise) == []


def test_end_after_ends_the_turn_in_its_pause_with_the_pause_audio(detector, sentence):
    """An end-of-turn verdict can close a turn before end_silence_ms: at once, or after a shorter silence."""
    from models.vad import SpeechPause

    sentence = sentence[: int((speech_bounds(sentence)[1] + 0.01) * SAMPLE_RATE)]  # without espeak's own tail
    stream = detector.stream(end_silence_ms=1500, pause_ms=160)
    events = push_in_chunks(stream, concat(silence(0.3), sentence, silence(0.25)))
    pause = next(e for e in events if isinstance(e, SpeechPause))
    assert not any(isinstance(e, SpeechEnd) for e in events), "1.5 s of silence has not passed yet"
    ended = stream.end_after(0)
    assert [type(e) for e in ended] == [SpeechEnd]
    assert ended[0].t == pause.t and np.array_equal(ended[0].audio, pause.audio)
    assert not stream.in_speech and stream.end_after(0) == []

    # A later silence ends it: 300 ms instead of 1500.
    stream = detector.stream(end_silence_ms=1500, pause_ms=160)
    push_in_chunks(stream, concat(silence(0.3), sentence, silence(0.2)))
    assert stream.end_after(300) == []
    late = push_in_chunks(stream, silence(0.2))
    assert [type(e) for e in late] == [SpeechEnd]
    assert late[0].detected_at - late[0].t == pytest.approx(0.32, abs=0.033)


def test_speech_coming_back_cancels_an_early_end(detector, sentence):
    sentence = sentence[: int((speech_bounds(sentence)[1] + 0.01) * SAMPLE_RATE)]
    stream = detector.stream(end_silence_ms=1500, pause_ms=160)
    push_in_chunks(stream, concat(silence(0.3), sentence, silence(0.2)))
    stream.end_after(400)
    events = push_in_chunks(stream, concat(sentence, silence(0.6)))
    assert not any(isinstance(e, SpeechEnd) for e in events), "the early end was for the silence before"
    assert stream.in_speech


def _push_continuing(stream, audio: np.ndarray, chunk: int = 320) -> tuple[list, list[bool]]:
    """Push like a receiver, asking continue_last() at every SpeechStart after the first; its answers."""
    events, answers = [], []
    for i in range(0, audio.size, chunk):
        for event in stream.push(audio[i : i + chunk]):
            events.append(event)
            if isinstance(event, SpeechStart) and len(events) > 1:
                answers.append(stream.continue_last())
    return events, answers


def test_speech_soon_after_an_end_can_continue_that_utterance_word_for_word(detector, sentence):
    """continue_last() joins the ended utterance, the silence after it and the new speech: the SpeechEnd then
    carries exactly the audio one unbroken turn would have, from the same start."""
    sentence = sentence[: int((speech_bounds(sentence)[1] + 0.01) * SAMPLE_RATE)]  # without espeak's own tail
    second = espeak("Tell me a joke about cats.")
    audio = concat(silence(0.5), sentence, silence(0.6), second, silence(1.5))
    events, answers = _push_continuing(detector.stream(end_silence_ms=300, resume_ms=2000), audio)
    assert kinds(events) == ["SpeechStart", "SpeechEnd", "SpeechStart", "SpeechEnd"] and answers == [True]
    whole = [e for e in push_in_chunks(detector.stream(end_silence_ms=1000), audio) if isinstance(e, SpeechEnd)]
    assert len(whole) == 1
    assert events[3].start == whole[0].start == events[1].start
    assert events[3].t == whole[0].t
    assert np.array_equal(events[3].audio, whole[0].audio)

    # Not asked to continue, the second utterance is on its own.
    alone = [e for e in push_in_chunks(detector.stream(end_silence_ms=300, resume_ms=2000), audio)
             if isinstance(e, SpeechEnd)]
    assert alone[1].start > events[1].t and alone[1].audio.size < whole[0].audio.size - sentence.size // 2


def test_continue_last_needs_an_end_within_resume_ms(detector, sentence):
    second = espeak("Tell me a joke about cats.")
    audio = concat(silence(0.5), sentence, silence(1.2), second, silence(1.0))
    for resume_ms, expected in ((500, [False]), (0, [False]), (2000, [True])):
        events, answers = _push_continuing(detector.stream(end_silence_ms=300, resume_ms=resume_ms), audio)
        assert kinds(events) == ["SpeechStart", "SpeechEnd", "SpeechStart", "SpeechEnd"], resume_ms
        assert answers == expected, resume_ms
    stream = detector.stream(end_silence_ms=300, resume_ms=2000)
    assert not stream.continue_last(), "nothing is being said"
