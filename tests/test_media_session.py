"""A real aiortc peer against the real app and models: media, speech, sync, lifecycle."""
from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import numpy as np
import pytest

from rtc_server.app import CONFIG, EXECUTOR, SESSIONS, WORK_EXECUTOR
from tests.rtc_client import AvatarClient
from tracks.vp8 import RenderedVp8Encoder

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

FPS = 25
LONG_TEXT = ("The quick brown fox jumps over the lazy dog. Peter Piper picked a peck of pickled peppers. "
             "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.")


@pytest.fixture
async def client(media_server):
    base_url, _ = media_server
    c = AvatarClient(base_url, keep_video=True)
    await c.connect()
    await c.wait_media()
    yield c
    await c.close()


def owner_peer(session):
    """The WebRTC peer that made `session` (its browser's connection)."""
    from rtc_server.outputs.webrtc import WebRtcPeer

    (peer,) = [o for o in session.outputs.values() if isinstance(o, WebRtcPeer) and o.owner]
    return peer


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def frames_between(times: list[float], start: float, end: float) -> list[int]:
    return [i for i, t in enumerate(times) if start <= t <= end]


def audio_between(client: AvatarClient, start: float, end: float) -> np.ndarray:
    r = client.received
    idx = frames_between(r.audio_times, start, end)
    return np.concatenate([r.audio_chunks[i] for i in idx]) if idx else np.zeros(0, np.int16)


def mouth_box(models) -> tuple[slice, slice]:
    """Rows/cols around the avatar's lips and chin, from its landmarks."""
    marks = models.renderers[models.default_avatar].avatar.landmarks
    lips = marks[48:68]
    x0, y0 = lips.min(axis=0)
    x1, y1 = lips.max(axis=0)
    pad_x, pad_y = 0.15 * (x1 - x0), 0.4 * (y1 - y0)
    return slice(int(y0 - pad_y), int(y1 + 2 * pad_y)), slice(int(x0 - pad_x), int(x1 + pad_x))


async def test_video_at_25_fps_and_audio_in_20_ms_frames(client, media_models):
    await asyncio.sleep(3.0)
    r = client.received
    pts = np.array(r.video_pts[-60:])
    assert np.median(np.diff(pts)) == 90_000 // FPS, "one frame per 1/25 s of media time"
    assert np.all(np.diff(pts) % (90_000 // FPS) == 0), "pts must stay on the 25 fps grid"
    # An overloaded machine may drop a frame rather than delay one; most must arrive.
    media_fps = (len(pts) - 1) / ((pts[-1] - pts[0]) / 90_000)
    assert media_fps > 22.0, f"frames missing from the timeline: {media_fps:.1f} fps"
    t = np.array(r.video_times[-60:])
    wall_fps = (len(t) - 1) / (t[-1] - t[0])
    assert 20 < wall_fps < 30, f"video arrives at {wall_fps:.1f} fps"  # loose: a busy machine jitters
    assert r.audio_rate == 48_000
    assert set(r.audio_samples[-50:]) == {960}, "audio frames must be 20 ms"
    renderer = media_models.renderers[media_models.default_avatar]
    assert r.video_size == (renderer.width, renderer.height)


async def test_video_is_encoded_without_the_webcam_denoiser_under_the_bitrate_cap(media_server):
    base_url, app = media_server
    c = AvatarClient(base_url)
    await c.connect()
    try:
        await c.wait_media()
        peer = owner_peer(app[SESSIONS][c.session_id])
        (sender,) = [s for s in peer.pc.getSenders() if s.track is peer.sink.video]
        encoder = sender._RTCRtpSender__encoder
        assert isinstance(encoder, RenderedVp8Encoder)
        encoder.target_bitrate = 5_000_000  # what a generous REMB would ask for
        assert encoder.target_bitrate == app[CONFIG].video_max_kbps * 1000
        await asyncio.sleep(0.5)  # frames keep flowing through the reopened encoder
        frames = len(c.received.video_times)
        await asyncio.sleep(0.5)
        assert len(c.received.video_times) > frames + 5
    finally:
        await c.close()


async def test_a_say_only_server_answers_without_asking_for_the_microphone(media_server):
    base_url, app = media_server
    assert app[CONFIG].listen is False
    c = AvatarClient(base_url)
    answer = await c.connect()
    try:
        await c.wait_media()
        audio_section = answer["sdp"].split("m=audio", 1)[1].split("m=", 1)[0]
        assert "a=sendonly" in audio_section, "the answer should take the avatar's voice down only"
        (server_audio,) = [t for t in owner_peer(app[SESSIONS][c.session_id]).pc.getTransceivers() if t.kind == "audio"]
        assert server_audio.currentDirection == "sendonly"
        await asyncio.sleep(1.0)
        assert c.mic.count == 0, "the client must not be asked to send its microphone"
        assert len(c.received.audio_times) > 25, "the avatar's audio still arrives"
    finally:
        await c.close()


async def test_say_speaks_and_moves_the_mouth_then_rests(client, media_models):
    rows, cols = mouth_box(media_models)
    r = client.received
    await asyncio.sleep(2.0)
    n_before = len(r.video_luma)
    uid = await client.say("Hello there, my name is Bob and I am happy to meet you.")
    start = await client.wait_event(lambda e: e.get("type") == "speech_start" and e["utterance_id"] == uid)
    end = await client.speech_end(uid)
    assert end["interrupted"] is False
    t_start = next(t for t, e in client.events if e is start)
    t_end = next(t for t, e in client.events if e is end)
    await asyncio.sleep(1.5)

    speech = audio_between(client, t_start + 0.2, t_end - 0.2)
    after = audio_between(client, t_end + 0.5, t_end + 1.4)
    assert rms(speech) > 800, "the received audio should carry speech"
    assert rms(after) < 100, "the avatar should be silent after speech_end"

    def coarse(i):
        # 8x8 block means of the mouth region: the shape of the mouth, not the codec's texture detail
        box = r.video_luma[i][rows, cols].astype(np.float32)
        h, w = (box.shape[0] // 8) * 8, (box.shape[1] // 8) * 8
        return box[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))

    def motion(idx):
        # frame-to-frame change: immune to the slow refinement of a still picture by the codec
        return np.array([np.abs(coarse(i) - coarse(i - 1)).mean() for i in idx])

    before = motion(range(n_before - 10, n_before))
    talking = motion(frames_between(r.video_times, t_start + 0.1, t_end - 0.1))
    resting = motion(frames_between(r.video_times, t_end + 0.5, t_end + 1.4))
    print(f"mouth motion: talking max {talking.max():.2f} mean {talking.mean():.2f}, "
          f"resting max {resting.max():.2f}, before {before.max():.2f}")
    assert len(talking) > 25
    print(f"mouth diff vs rest: talking max {talking.max():.1f} mean {talking.mean():.1f}, resting {resting.max():.1f}, before {before.max():.1f}")
    assert talking.mean() > 2.0, f"mouth barely moved while speaking (mean change {talking.mean():.2f})"
    assert (talking > 1.0).mean() > 0.5, "the mouth should keep moving through the sentence"
    # after speech only the codec's refinement of the still picture remains
    assert resting.mean() < 0.5 and resting.max() < 0.3 * talking.mean(), \
        f"mouth should rest after speech (change {resting.mean():.2f}, max {resting.max():.2f})"


# Lips that close (p, b, m) between open vowels, so that the mouth and the voice both swing.
LIP_SENTENCE = ("Papa, open a map of Bombay. Bob, pass me a plum, a pear and a big apple. "
                "Mama made a pumpkin pie, and Pam baked a bun.")


def voice_envelope(r, frame_times: np.ndarray) -> np.ndarray:
    """Loudness (dB) of the received audio in each video frame's 40 ms slot, on the sender's clock."""
    starts = np.array([r.sender_time("audio", p, r.audio_rate) for p in r.audio_pts])
    levels = np.array([20 * np.log10(max(rms(chunk), 1.0)) for chunk in r.audio_chunks])
    env = np.full(len(frame_times), np.nan)
    for i, t in enumerate(frame_times):
        inside = (starts >= t - 0.005) & (starts < t + 1 / FPS - 0.005)
        if inside.any():
            env[i] = levels[inside].mean()
    return env


def best_lag(mouth: np.ndarray, voice: np.ndarray, max_lag: int = 10) -> tuple[int, dict[int, float]]:
    """The shift (frames) that best lines the mouth up with the voice: positive when the voice
    comes later than the mouth. Also every lag's Pearson r."""
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        a = mouth[max(0, -lag): len(mouth) - max(0, lag)]
        b = voice[max(0, lag): len(voice) - max(0, -lag)]
        ok = np.isfinite(a) & np.isfinite(b)
        scores[lag] = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 20 else -1.0
    return max(scores, key=scores.get), scores


async def test_the_mouth_opens_and_closes_with_the_voice_it_speaks(media_server):
    """End to end, as a viewer sees and hears it: the face is re-detected in the received video,
    its lip opening per frame is lined up with the loudness of the received voice on the sender's
    RTCP clock, and the best alignment must be within one frame. Delaying the voice behind
    its pictures (or the pictures behind the voice) moves the peak and fails this."""
    from models.lipsync.accuracy import OpeningMeter

    base_url, _ = media_server
    c = AvatarClient(base_url, keep_frames=True)
    await c.connect()
    try:
        await c.wait_media()
        await asyncio.sleep(1.0)  # the first RTCP sender reports
        uid = await c.say(LIP_SENTENCE)
        await c.speech_end(uid)
        await asyncio.sleep(0.6)
    finally:
        await c.close()
    r = c.received
    frame_times = np.array([r.sender_time("video", p, 90_000) for p in r.video_pts])
    voice = voice_envelope(r, frame_times)
    loud = np.flatnonzero(voice > np.nanmax(voice) - 30)
    span = np.arange(max(0, loud[0] - 12), min(len(voice), loud[-1] + 12))  # the utterance, rest around it
    assert len(span) > 4 * FPS, f"only {len(span)} frames of speech arrived"
    mouth = OpeningMeter().openings([r.video_frames[i] for i in span])
    assert np.isfinite(mouth).mean() > 0.9, "the face was not found in the received video"
    lag, scores = best_lag(mouth, voice[span])
    print(f"mouth vs voice: best lag {lag} frames (r={scores[lag]:.2f}); "
          + " ".join(f"{k}:{v:.2f}" for k, v in scores.items() if abs(k) <= 8))
    assert scores[lag] > 0.3, f"the mouth does not follow the voice at any lag: {scores}"
    assert abs(lag) <= 1, f"the mouth is {lag * 1000 // FPS} ms off the voice it speaks (r by lag: {scores})"


async def test_audio_and_video_timelines_stay_within_one_frame_over_20_s(client):
    await client.say(LONG_TEXT)
    await asyncio.sleep(20.0)
    wire = client.received.wire
    video = sorted(wire["video"].items())
    audio = sorted(wire["audio"].items())
    assert len(video) > 20 * FPS * 0.9 and len(audio) > 20 * 50 * 0.9

    def earliest_offsets(items, clock_rate, window=2.0):
        # arrival - media time; the minimum per window filters network/encode jitter
        ts = np.array([k for k, _ in items], dtype=np.float64)
        arr = np.array([v for _, v in items])
        ts = np.unwrap(ts, period=2**32)
        off = arr - ts / clock_rate
        bins = ((arr - arr[0]) // window).astype(int)
        return {b: off[bins == b].min() for b in np.unique(bins)}

    ov = earliest_offsets(video, 90_000)
    oa = earliest_offsets(audio, 48_000)
    common = sorted(set(ov) & set(oa))[1:-1]
    assert len(common) >= 8
    skew = np.array([ov[b] - oa[b] for b in common])
    drift = skew.max() - skew.min()
    assert drift < 1 / FPS, f"audio and video drifted {drift * 1000:.0f} ms apart over 20 s"


def flashes_and_beeps(r) -> tuple[list[int], list[int]]:
    """pts of the first white frame of each sync-test flash and of the first loud audio frame of each beep."""
    luma = np.array([y.mean() for y in r.video_luma])
    white = np.flatnonzero(luma > 128)
    starts = [k for k in range(len(white)) if k == 0 or white[k - 1] != white[k] - 1]
    runs = [(white[a], (starts + [len(white)])[n + 1] - a) for n, a in enumerate(starts)]
    # A flash already under way when the first frame arrived is seen in part: skip it.
    flashes = [r.video_pts[i] for i, length in runs if length == max(n for _, n in runs)]
    # By media time, not frame count: a frame lost on a busy machine must not look like a shifted flash.
    gaps = np.diff(flashes)
    assert all(abs(g - 2 * 90_000) <= 90_000 // FPS for g in gaps), f"flashes not 2 s apart (pts): {gaps}"
    loud = [i for i, chunk in enumerate(r.audio_chunks) if rms(chunk) > 3000]
    beeps = [r.audio_pts[i] for k, i in enumerate(loud) if k == 0 or loud[k - 1] != i - 1]
    return flashes, beeps


def beep_minus_flash(beep_times: list[float], flash_times: list[float]) -> list[float]:
    """Each beep against its nearest flash; a beep whose flash was seen only in part (skipped) has none within 1 s."""
    pairs = [bt - min(flash_times, key=lambda ft: abs(ft - bt)) for bt in beep_times]
    return [d for d in pairs if abs(d) < 1.0]


def send_late(track, seconds: float) -> None:
    """Hand each frame to aiortc `seconds` after it is due, as a busy encoder core would."""
    recv = track.recv

    async def late():
        frame = await recv()
        await asyncio.sleep(max(0.0, track.last_due + seconds - time.monotonic()))
        return frame

    track.recv = late


async def test_sync_test_beep_and_flash_leave_on_the_same_tick(media_server):
    base_url, _ = media_server
    c = AvatarClient(base_url, keep_video=True)
    await c.connect(mode="sync-test")
    try:
        await c.wait_media()
        await asyncio.sleep(7.0)
        r = c.received
        flashes, beeps = flashes_and_beeps(r)
        assert 2 <= len(flashes) <= 4, f"expected a flash every 2 s, saw {len(flashes)}"
        assert len(beeps) >= 3
        flash_times = [t for p in flashes if (t := r.wire_time("video", p)) is not None]
        beep_times = [t for p in beeps if (t := r.wire_time("audio", p)) is not None]
        offsets = beep_minus_flash(beep_times, flash_times)
        assert len(offsets) >= 2
        assert max(abs(o) for o in offsets) < 1 / FPS, f"beep vs flash on the wire: {offsets}"
    finally:
        await c.close()


async def test_sender_reports_put_late_video_back_on_the_audio_timeline(media_server):
    """Video sent 100 ms late still maps, through RTCP sender reports, onto the audio's timeline.

    Browsers align audio and video by those reports; with send times in them the 100 ms would
    become 100 ms of lip-sync error.
    """
    base_url, app = media_server
    c = AvatarClient(base_url, keep_video=True)
    await c.connect(mode="sync-test")
    try:
        send_late(owner_peer(app[SESSIONS][c.session_id]).sink.video, 0.100)
        await c.wait_media()
        await asyncio.sleep(7.0)
        r = c.received
        assert len(r.reports["audio"]) >= 2 and len(r.reports["video"]) >= 2, r.reports
        flashes, beeps = flashes_and_beeps(r)
        assert len(flashes) >= 2 and len(beeps) >= 3
        wire = beep_minus_flash([r.wire_time("audio", p) for p in beeps], [r.wire_time("video", p) for p in flashes])
        # (late by 100 ms, give or take the arrival jitter of a busy 2-core machine)
        assert all(-0.2 < o < -0.07 for o in wire), f"the video was not sent late: {wire}"
        reported = beep_minus_flash([r.sender_time("audio", p, 48_000) for p in beeps],
                                    [r.sender_time("video", p, 90_000) for p in flashes])
        assert len(wire) >= 2 and len(reported) >= 2, (wire, reported)
        assert max(abs(o) for o in reported) < 0.002, f"beep vs flash by sender reports: {reported}"
    finally:
        await c.close()


async def test_interrupt_stops_speech_and_nothing_leaks_after(client):
    uid = await client.say(LONG_TEXT)
    await client.wait_event(lambda e: e.get("type") == "speech_start" and e["utterance_id"] == uid)
    await asyncio.sleep(1.0)
    status, body = await client.request("POST", f"/sessions/{client.session_id}/interrupt")
    assert status == 200 and uid in body["interrupted"]
    t_int = time.monotonic()
    end = await client.speech_end(uid)
    assert end["interrupted"] is True
    await asyncio.sleep(2.0)
    assert rms(audio_between(client, t_int + 0.4, t_int + 2.0)) < 100, "audio after interrupt must be silent"
    status, state = await client.request("GET", f"/sessions/{client.session_id}")
    assert state["state"] == "idle" and state["stats"]["queue_depth"] == 0


async def test_say_and_interrupt_over_the_data_channel(client):
    client.channel.send('{"type": "say", "text": "Testing the data channel."}')
    start = await client.wait_event(lambda e: e.get("type") == "speech_start")
    client.channel.send('{"type": "interrupt"}')
    end = await client.wait_event(lambda e: e.get("type") == "speech_end" and e["utterance_id"] == start["utterance_id"])
    assert end["interrupted"] is True
    client.channel.send('{"type": "say"}')
    error = await client.wait_event(lambda e: e.get("type") == "error")
    assert "text" in error["message"]


async def test_closed_peer_leaves_no_session_task_or_thread(media_server):
    base_url, app = media_server
    sessions = app[SESSIONS]
    gc.collect()
    threads_before = {t.name for t in threading.enumerate()}
    for _ in range(2):
        c = AvatarClient(base_url)
        await c.connect()
        await c.wait_media()
        sid = c.session_id
        session = sessions[sid]
        await c.say("Goodbye.")
        await c.close()
        for _ in range(100):
            if sid not in sessions:
                break
            await asyncio.sleep(0.1)
        assert sid not in sessions, "the session must end when its peer closes"
        assert session.task_count == 0
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(sid)]
    await asyncio.sleep(0.5)
    leaked = {t.name for t in threading.enumerate()} - threads_before
    # worker pools are shared and bounded; anything else that appeared per session is a leak
    assert not {n for n in leaked if not n.startswith(("media", "work", "ThreadPoolExecutor", "asyncio"))}, leaked


async def test_delete_ends_the_session(media_server):
    base_url, app = media_server
    c = AvatarClient(base_url)
    await c.connect()
    try:
        status, _ = await c.request("DELETE", f"/sessions/{c.session_id}")
        assert status == 204
        assert c.session_id not in app[SESSIONS]
        status, body = await c.request("GET", f"/sessions/{c.session_id}")
        assert status == 404 and "unknown session" in body["error"]
    finally:
        await c.close()


async def test_tts_and_asr_workers_yield_to_the_media_threads(media_server):
    _, app = media_server

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop = asyncio.get_running_loop()
    worker = await loop.run_in_executor(app[WORK_EXECUTOR], nice)
    renderer = await loop.run_in_executor(app[EXECUTOR], nice)
    assert worker == min(19, nice() + app[CONFIG].work_nice) > renderer == nice()
