"""tracks/opus.py: the avatar's voice coded on the clock's thread, checked with a real Opus decoder."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from tracks.clock import MediaClock
from tracks.opus import OpusPacketizer, opus_frame_ok
from tracks.rtc import RtcSink

RATE, PACKET = 48_000, 960


def vowel(n_packets: int) -> np.ndarray:
    """A voiced, vowel-like sound: 140 Hz pitch with two formant-ish partials."""
    t = np.arange(n_packets * PACKET) / RATE
    wave = np.sin(2 * np.pi * 140 * t) + 0.6 * np.sin(2 * np.pi * 700 * t) + 0.3 * np.sin(2 * np.pi * 1200 * t)
    return (wave * 6000).astype(np.int16)


def decode(packets: list[av.Packet]) -> np.ndarray:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", RATE
    out = []
    for p in packets:
        packet = av.Packet(bytes(p))
        packet.pts, packet.time_base = p.pts, Fraction(1, RATE)
        out += [f.to_ndarray().reshape(-1) for f in decoder.decode(packet)]
    return np.concatenate(out)


def partial_db(x: np.ndarray, hz: float) -> float:
    """Level (dB) of the `hz` component of `x`, from one windowed FFT."""
    x = x.astype(np.float64) * np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x))
    return 20 * np.log10(spectrum[int(round(hz * len(x) / RATE))] + 1e-9)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_speech_survives_and_packets_carry_their_sample_position():
    opus = OpusPacketizer(RATE, PACKET)
    pcm = vowel(25)
    packets = [opus.encode(pcm[i * PACKET:(i + 1) * PACKET], 5000 + i * PACKET) for i in range(25)]
    assert [p.pts for p in packets] == [5000 + i * PACKET for i in range(25)]
    assert all(p.time_base == Fraction(1, RATE) for p in packets)
    out = decode(packets)
    assert len(out) == len(pcm)
    # Opus codes by ear, not by waveform: the partials come back at their level
    for hz in (140, 700, 1200):
        assert abs(partial_db(out[4800:], hz) - partial_db(pcm[4800:], hz)) < 1.0, f"{hz} Hz partial changed"
    # and the decoded wave follows the input, once libopus's 312-sample lookahead is allowed for
    assert np.corrcoef(out[2312:14312].astype(float), pcm[2000:14000].astype(float))[0, 1] > 0.8
    assert opus.encoded == 25 and opus.reused == 0


def test_settled_silence_is_reused_and_speech_after_it_is_coded_again():
    opus = OpusPacketizer(RATE, PACKET)
    silence = np.zeros(PACKET, np.int16)
    voice = vowel(10)
    packets = [opus.encode(voice[i * PACKET:(i + 1) * PACKET], i * PACKET) for i in range(10)]
    packets += [opus.encode(silence, (10 + i) * PACKET) for i in range(40)]
    assert opus.encoded < 20, "once settled, silence must not be coded again"
    assert opus.reused == 50 - opus.encoded
    assert len({bytes(p) for p in packets[-opus.reused:]}) == 1
    packets += [opus.encode(voice[i * PACKET:(i + 1) * PACKET], (50 + i) * PACKET) for i in range(10)]
    assert opus.encoded == 50 - opus.reused + 10, "speech after silence is coded, never replayed"
    out = decode(packets)
    assert len(out) == 60 * PACKET
    assert rms(out[25 * PACKET:50 * PACKET]) == 0, "reused silent packets decode to digital silence"
    assert rms(out[52 * PACKET:]) > 0.5 * rms(voice)


def test_sizes_opus_cannot_code_fall_back_to_aiortc_frames():
    assert opus_frame_ok(48_000, 960) and opus_frame_ok(16_000, 320)
    assert not opus_frame_ok(48_000, 1600) and not opus_frame_ok(44_100, 882)
    with pytest.raises(ValueError, match="cannot code"):
        OpusPacketizer(48_000, 1600)
    assert RtcSink(MediaClock(25), 48_000).tick_audio.opus is not None
    clock = MediaClock(30)
    clock.start()
    sink = RtcSink(clock, 48_000)  # 1600 samples a tick: no 20 ms tiling, so aiortc's Opus encoder
    assert sink.tick_audio.opus is None
    sink.push(0, _silent_frame(sink))
    (due, frame), = sink.audio._frames
    assert isinstance(frame, av.AudioFrame) and frame.samples == 1600


def _silent_frame(sink: RtcSink):
    from tracks.avframe import AVFrame

    return AVFrame(video=np.zeros((24, 16), np.uint8), audio=np.zeros(sink.tick_audio.samples_per_tick, np.int16))
