"""Sessions with more than one way out, against real servers and players: a session made
without a browser feeding HLS, a recording, an RTMP push to a real nginx, WebRTC viewers."""
from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import av
import numpy as np
import pytest

from tests import rtmp_server
from tests.media_marks import Marks, read_marks
from tests.needs import tool
from tests.rtc_client import AvatarClient

pytestmark = pytest.mark.slow

FPS = 25
FRAME_S = 1 / FPS


class Api:
    """HTTP calls on one session with its token."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, session_id: str, token: str) -> None:
        self.http, self.base_url, self.session_id = http, base_url, session_id
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kwargs) -> tuple[int, dict | bytes | None]:
        url = self.base_url + path.replace("{id}", self.session_id)
        async with self.http.request(method, url, headers=self.headers, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    async def output(self, output_id: str) -> dict:
        status, body = await self.call("GET", "/sessions/{id}")
        assert status == 200, body
        (found,) = [o for o in body["outputs"] if o["id"] == output_id]
        return found

    async def wait_output(self, output_id: str, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.output(output_id)
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"output {output_id} stayed {found}")
            await asyncio.sleep(0.2)


async def create_session(http: aiohttp.ClientSession, base_url: str, **body) -> tuple[Api, dict]:
    async with http.post(base_url + "/sessions", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    return Api(http, base_url, answer["session_id"], answer["token"]), answer


async def hls_media(http: aiohttp.ClientSession, base_url: str, playlist_url: str) -> tuple[str, bytes]:
    """The playlist, and its init segment followed by every segment it names (one fMP4 stream)."""
    async with http.get(base_url + playlist_url) as resp:
        assert resp.status == 200 and resp.content_type == "application/vnd.apple.mpegurl"
        playlist = await resp.text()
    folder = base_url + playlist_url.rsplit("/", 1)[0] + "/"
    names = ["init.mp4"] + [line for line in playlist.splitlines() if line.endswith(".m4s")]
    parts = []
    for name in names:
        async with http.get(folder + name) as resp:
            assert resp.status == 200, name
            parts.append(await resp.read())
    return playlist, b"".join(parts)


def assert_in_sync(marks: Marks, what: str, skip_s: float = 0.5) -> None:
    """Each flash has its beep within one frame (marks in the first moments, where the encoder
    starts, are left out), and the picture runs at 25 fps."""
    start = marks.video_times[0] + skip_s
    later = Marks(flashes=[f for f in marks.flashes if f > start], beeps=[b for b in marks.beeps if b > start - 0.2],
                  video_times=marks.video_times)
    offsets = later.offsets_ms()
    assert len(offsets) >= 1, f"{what}: no flash with its beep: {marks.flashes} / {marks.beeps}"
    assert len(offsets) == len(later.flashes), f"{what}: a flash without a beep: {later.flashes} / {later.beeps}"
    assert max(abs(o) for o in offsets) <= FRAME_S * 1000, f"{what}: beep minus flash {offsets} ms"
    assert abs(marks.fps - FPS) < 0.2, f"{what}: {marks.fps:.2f} fps"


async def test_a_session_without_a_browser_feeds_hls_in_sync_and_speaks(media_server):
    base_url, app = media_server
    async with aiohttp.ClientSession() as http:
        api, answer = await create_session(http, base_url, mode="sync-test", listen=False,
                                           outputs=[{"type": "hls"}])
        (hls,) = answer["outputs"]
        assert hls["type"] == "hls" and hls["url"].endswith("/index.m3u8") and hls["watch"].startswith("/watch/")
        try:
            await api.wait_output(hls["id"], lambda o: o["stats"]["segments"] >= 5, timeout=30)
            # The capability URL needs no header: any player can open it.
            playlist, media = await hls_media(http, base_url, hls["url"])
            assert "#EXT-X-MAP:URI=\"init.mp4\"" in playlist and "#EXT-X-ENDLIST" not in playlist
            marks = read_marks(av.open(io.BytesIO(media)))
            assert marks.video_size is not None
            assert len(marks.flashes) >= 2
            assert_in_sync(marks, "HLS segments")
            # A wrong key is a 404, like a stream that ended.
            async with http.get(base_url + "/live/not-a-key/index.m3u8") as resp:
                assert resp.status == 404
            status, body = await api.call("GET", "/sessions/{id}")
            assert status == 200 and body["connection"] is None and body["listen"] is False
        finally:
            status, _ = await api.call("DELETE", "/sessions/{id}")
            assert status == 204
        async with http.get(base_url + hls["url"]) as resp:
            assert resp.status == 404, "the playlist of an ended session must be gone"

        # A normal headless session takes `say` and its voice reaches the HLS audio.
        api, answer = await create_session(http, base_url, listen=False, outputs=[{"type": "hls"}])
        (hls,) = answer["outputs"]
        try:
            status, body = await api.call("POST", "/sessions/{id}/say", json={"text": "Hello from a kiosk."})
            assert status == 202, body
            await asyncio.sleep(1.0)
            await api.wait_output(hls["id"], lambda o: o["stats"]["segments"] >= 4, timeout=30)
            _, media = await hls_media(http, base_url, hls["url"])
            container = av.open(io.BytesIO(media))
            loud = 0.0
            for frame in container.decode(audio=0):
                pcm = frame.to_ndarray()
                loud = max(loud, float(abs(pcm).max()))
            assert loud > 0.1, f"no speech in the HLS audio (peak {loud:.3f})"
        finally:
            await api.call("DELETE", "/sessions/{id}")


async def test_a_recording_is_playable_while_made_and_is_one_mp4_of_its_duration(media_server):
    base_url, app = media_server
    async with aiohttp.ClientSession() as http:
        api, answer = await create_session(http, base_url, mode="sync-test", listen=False, outputs=[])
        try:
            status, record = await api.call("POST", "/sessions/{id}/outputs", json={"type": "record"})
            assert status == 201, record
            from rtc_server.app import SESSIONS

            session = app[SESSIONS][api.session_id]
            first_tick = session.stream.tick
            await api.wait_output(record["id"], lambda o: o["stats"]["seconds"] >= 3.0, timeout=30)
            playlist, media = await hls_media(http, base_url, record["url"])
            assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and "#EXT-X-ENDLIST" not in playlist
            assert_in_sync(read_marks(av.open(io.BytesIO(media))), "recording while it is made")
            await asyncio.sleep(2.5)
            status, _ = await api.call("DELETE", f"/sessions/{{id}}/outputs/{record['id']}")
            last_tick = session.stream.tick
            assert status == 204
            finished = await api.output(record["id"])
            assert finished["state"] == "finished"
            status, mp4 = await api.call("GET", finished["download"])
            assert status == 200 and isinstance(mp4, bytes)
            # Without the token there is nothing to download.
            async with http.get(base_url + finished["download"]) as resp:
                assert resp.status == 401
            container = av.open(io.BytesIO(mp4))
            duration = container.duration / 1e6
            recorded = (last_tick - first_tick) / FPS
            assert abs(duration - recorded) <= 0.1, f"MP4 {duration:.3f} s, session ticks while recording {recorded:.3f} s"
            marks = read_marks(container)
            assert_in_sync(marks, "finished MP4")
            assert len(marks.flashes) >= 2
            # The sound goes on to the end of the last picture (the audio encoder lags the picture
            # by about two ticks: stopped without waiting for it, the recording's last ~50 ms are mute).
            picture_end = marks.video_times[-1] + 1 / FPS
            assert marks.audio_seconds >= picture_end - 0.005, \
                f"audio ends at {marks.audio_seconds:.3f} s, the picture at {picture_end:.3f} s"
            playlist, _ = await hls_media(http, base_url, record["url"])
            assert "#EXT-X-ENDLIST" in playlist
        finally:
            await api.call("DELETE", "/sessions/{id}")


def read_back(url: str, seconds: float) -> Marks:
    """Play an RTMP stream as a viewer would (PyAV), for `seconds` of media."""
    with av.open(url, timeout=(10, 10)) as container:
        return read_marks(container, max_seconds=seconds)


@tool(rtmp_server.available(), "needs nginx with the RTMP module: apt-get install -y nginx libnginx-mod-rtmp")
async def test_rtmp_push_reaches_a_real_server_in_sync_and_survives_its_restart(media_server, tmp_path):
    base_url, _ = media_server
    nginx = rtmp_server.RtmpServer(tmp_path)
    nginx.start()
    client = AvatarClient(base_url)
    try:
        await client.connect(mode="sync-test")
        await client.wait_media()
        status, push = await client.request("POST", f"/sessions/{client.session_id}/outputs",
                                            json={"type": "rtmp", "url": nginx.url("sync")})
        assert status == 201, push
        assert "sync" not in push["url"], "the stream key must not be shown"
        api = Api(client.http, base_url, client.session_id, client.token)
        await api.wait_output(push["id"], lambda o: o["state"] == "live")
        marks = await asyncio.to_thread(read_back, nginx.url("sync"), 5.0)
        assert_in_sync(marks, "RTMP read-back")

        # The server goes away: the push notices, the browser's peer does not.
        nginx.stop()
        await api.wait_output(push["id"], lambda o: o["state"] == "reconnecting")
        event = await client.wait_event(lambda e: e.get("type") == "output" and e["state"] == "reconnecting", 5)
        assert event["id"] == push["id"]
        before = len(client.received.video_times)
        await asyncio.sleep(2.0)
        assert len(client.received.video_times) - before >= 2.0 * FPS - 3, "the WebRTC peer stalled"

        nginx.start()
        live = await api.wait_output(push["id"], lambda o: o["state"] == "live" and o["stats"]["connects"] == 2,
                                     timeout=30)
        assert live["stats"]["failures"] >= 1
        marks = await asyncio.to_thread(read_back, nginx.url("sync"), 3.0)
        assert_in_sync(marks, "RTMP read-back after the server's restart")
        status, _ = await client.request("DELETE", f"/sessions/{client.session_id}/outputs/{push['id']}")
        assert status == 204
    finally:
        await client.close()
        nginx.stop()


async def test_output_requests_with_mistakes_get_clear_errors(media_server):
    base_url, _ = media_server
    async with aiohttp.ClientSession() as http:
        for body, expected in [
            ({"outputs": [{"type": "smoke-signals"}]}, "outputs.0.type"),
            ({"outputs": [{"type": "rtmp"}]}, "needs a url"),
            ({"outputs": [{"type": "rtmp", "url": "http://example.com/x"}]}, "outputs.0.url"),
            ({"outputs": "hls"}, "outputs"),
            ({"listen": "maybe"}, "listen"),
            ({"avatar": "../etc"}, "avatar"),
        ]:
            async with http.post(base_url + "/sessions", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 400, (body, answer)
                assert expected in answer["error"], (body, answer)
        api, _ = await create_session(http, base_url, listen=False)
        try:
            status, body = await api.call("DELETE", "/sessions/{id}/outputs/hls-00000000")
            assert status == 404 and "no such output" in body["error"]
            stranger = Api(http, base_url, api.session_id, "wrong-token")
            status, _ = await stranger.call("POST", "/sessions/{id}/outputs", json={"type": "hls"})
            assert status == 404
        finally:
            status, _ = await api.call("DELETE", "/sessions/{id}")
            assert status == 204


def sync_offsets(client: AvatarClient, since: float = 0.0) -> list[float]:
    """beep minus flash on the wire (seconds) for what `client` received after `since`."""
    from tests.test_media_session import beep_minus_flash, flashes_and_beeps

    r = client.received
    flashes, beeps = flashes_and_beeps(r)
    flash_times = [t for p in flashes if (t := r.wire_time("video", p)) is not None and t > since]
    beep_times = [t for p in beeps if (t := r.wire_time("audio", p)) is not None and t > since]
    return beep_minus_flash(beep_times, flash_times)


def received_fps(client: AvatarClient, since: float) -> float:
    times = [t for t in client.received.video_times if t > since]
    return (len(times) - 1) / (times[-1] - times[0])


async def test_three_viewers_share_one_encoding_and_leave_the_first_peer_in_sync(media_server):
    from rtc_server.app import SESSIONS

    base_url, app = media_server
    first = AvatarClient(base_url, keep_video=True)
    viewers = [AvatarClient(base_url, keep_video=True) for _ in range(3)]
    try:
        await first.connect(mode="sync-test")
        await first.wait_media()
        await asyncio.sleep(4.5)
        before = sync_offsets(first)
        assert before and max(abs(o) for o in before) < FRAME_S, f"first peer alone: {before}"

        changes = time.monotonic()
        answers = [await viewer.watch(first.session_id, first.token) for viewer in viewers]
        await asyncio.gather(*(v.wait_media() for v in viewers))
        session = app[SESSIONS][first.session_id]
        feed = session.viewer_feed.feed
        assert feed is not None and feed.viewers == 3
        status, hls = await first.request("POST", f"/sessions/{first.session_id}/outputs", json={"type": "hls"})
        assert status == 201
        await asyncio.sleep(2.0)
        for removed in (hls["id"], answers[2]["viewer_id"]):
            status, _ = await first.request("DELETE", f"/sessions/{first.session_id}/outputs/{removed}")
            assert status == 204
        assert feed.viewers == 2
        watched = time.monotonic()
        await asyncio.sleep(4.5)

        after = sync_offsets(first, since=changes)
        assert after and max(abs(o) for o in after) < FRAME_S, f"first peer with viewers coming and going: {after}"
        assert abs(sum(after) / len(after) - sum(before) / len(before)) < FRAME_S / 2, (before, after)
        for k, client in enumerate([first, *viewers[:2]]):
            assert abs(received_fps(client, watched) - FPS) < 1.0, f"client {k}: {received_fps(client, watched):.1f} fps"
            offsets = sync_offsets(client, since=watched)
            assert offsets and max(abs(o) for o in offsets) < FRAME_S, f"client {k}: beep minus flash {offsets}"
        # One encoding for all viewers: at most one VP8 frame per tick since the first viewer came.
        assert feed.stats.encoded <= session.stream.tick

        # Speech reaches every viewer.
        # Speech reaches every viewer (no beeps while the avatar speaks: the pattern is the idle picture).
        uid = await first.say("Hello to everyone watching this avatar.")
        await first.speech_end(uid)
        started = next(t for t, e in first.events if e.get("type") == "speech_start" and e["utterance_id"] == uid)
        ended = next(t for t, e in first.events if e.get("type") == "speech_end" and e["utterance_id"] == uid)
        assert ended - started > 1.0
        await asyncio.sleep(0.3)
        for k, viewer in enumerate(viewers[:2]):
            during = [c for t, c in zip(viewer.received.audio_times, viewer.received.audio_chunks)
                      if started + 0.2 < t < ended - 0.2]
            loud = sum(1 for c in during if np.sqrt(np.mean(c.astype(float) ** 2)) > 1000)
            assert loud > 0.5 * len(during), f"viewer {k}: {loud} of {len(during)} packets carry the voice"
    finally:
        for client in [*viewers, first]:
            await client.close()


async def test_a_stalled_output_drops_its_own_packets_and_holds_up_nothing(media_server):
    """An output whose writes hang (a server that accepts and never reads), injected on purpose:
    the clock, the browser's peer and another output keep going; only the stalled one drops."""
    import threading

    from rtc_server.app import SESSIONS
    from rtc_server.outputs.h264 import FeedOutput
    from tracks.packet_worker import PacketWorker

    release = threading.Event()

    class Hanging(PacketWorker):
        name = "hanging"

        def handle(self, packet) -> None:
            release.wait(30)

    class HangingOutput(FeedOutput):
        type = "hanging"

        def make_worker(self, feed):
            return Hanging(backlog=100)

    base_url, app = media_server
    client = AvatarClient(base_url)
    try:
        await client.connect(mode="sync-test")
        await client.wait_media()
        session = app[SESSIONS][client.session_id]
        status, hls = await client.request("POST", f"/sessions/{client.session_id}/outputs", json={"type": "hls"})
        assert status == 201
        stalled = await session.add_output(HangingOutput())
        late_before = session.stream.stats.late_ticks + session.stream.stats.skipped_ticks
        frames_before = len(client.received.video_times)
        segments_before = (await Api(client.http, base_url, client.session_id, client.token).output(hls["id"]))
        await asyncio.sleep(6.0)
        api = Api(client.http, base_url, client.session_id, client.token)
        stuck = await api.output(stalled.id)
        assert stuck["stats"]["dropped_packets"] > 100, stuck
        assert len(client.received.video_times) - frames_before >= 6 * FPS - 10, "the browser's peer slowed"
        assert session.stream.stats.late_ticks + session.stream.stats.skipped_ticks - late_before <= 2
        healthy = await api.output(hls["id"])
        assert healthy["stats"]["dropped_packets"] == 0
        assert healthy["stats"]["segments"] - segments_before["stats"]["segments"] >= 5, (segments_before, healthy)
        release.set()
        await session.remove_output(stalled.id)
    finally:
        release.set()
        await client.close()
