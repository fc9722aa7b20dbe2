"""The face stream: per tick, only the part of the picture that changed (head and mouth) as a
JPEG, plus that tick's audio, for clients that paint it over a full picture they already hold
(a canvas over a WebSocket, where WebRTC is blocked or too heavy).

The region is found by comparing each picture with the full picture the client holds: the
box of pixels that differ, widened to 16-pixel blocks and joined with the previous box (so the
client also gets back what went still again). When most of the picture changed (a cut, the
sync-test flash) the whole picture is sent and becomes the new reference.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from tracks.avframe import AVFrame
from tracks.encode_thread import EncodeThread

# Binary message of one tick (little-endian), documented in the README:
# kind u8 (1), flags u8 (1 full picture, 2 speech), header size u16, tick u32, media time f64 (s),
# x, y, w, h u16 (w = 0: no picture this tick), jpeg bytes u32, audio rate u32, audio samples u32;
# then the JPEG, then the audio as int16 mono.
TICK_HEADER = struct.Struct("<BBHIdHHHHIII")
KIND_TICK = 1
FLAG_FULL = 1
FLAG_SPEECH = 2
# A chunk of voice sent ahead of playback (viseme sessions, whose ticks carry no audio):
# kind u8 (2), flags u8 (0), header size u16 (where the audio starts), media time f64 (s) of its
# first sample, audio rate u32, audio samples u32, utterance id bytes u16; then the utterance id
# (UTF-8), padding to an even offset, then the audio as int16 mono.
VOICE_HEADER = struct.Struct("<BBHdIIH")
KIND_VOICE = 2


@dataclass(frozen=True)
class FaceTick:
    tick: int
    media_time: float
    full: bool
    box: tuple[int, int, int, int] | None  # x, y, w, h of the JPEG, None when nothing changed
    jpeg: bytes
    audio: np.ndarray                       # int16 mono at the stream's audio rate
    speech: bool

    def message(self, audio_rate: int) -> bytes:
        x, y, w, h = self.box or (0, 0, 0, 0)
        flags = (FLAG_FULL if self.full else 0) | (FLAG_SPEECH if self.speech else 0)
        header = TICK_HEADER.pack(KIND_TICK, flags, TICK_HEADER.size, self.tick, self.media_time, x, y, w, h,
                                  len(self.jpeg), audio_rate, len(self.audio))
        return header + self.jpeg + self.audio.astype("<i2").tobytes()


class RegionTracker:
    """Which box of each yuv420p picture differs from the reference the client holds."""

    def __init__(self, width: int, height: int, threshold: int = 6, block: int = 16, full_share: float = 0.6) -> None:
        self.width, self.height = width, height
        self.threshold = threshold
        self.block = block
        self.full_share = full_share
        self._reference: np.ndarray | None = None
        self._previous: tuple[int, int, int, int] | None = None

    def reset(self) -> None:
        """The next picture goes whole (a client just joined)."""
        self._reference = None
        self._previous = None

    def update(self, yuv: np.ndarray) -> tuple[bool, tuple[int, int, int, int] | None]:
        """(full picture?, box to send or None)."""
        luma = yuv[: self.height]
        if self._reference is None:
            self._reference = luma.copy()
            self._previous = None
            return True, (0, 0, self.width, self.height)
        changed = np.abs(luma.astype(np.int16) - self._reference) > self.threshold
        rows = np.flatnonzero(changed.any(axis=1))
        cols = np.flatnonzero(changed.any(axis=0))
        box = None
        if len(rows):
            b = self.block
            y0, y1 = rows[0] // b * b, min(self.height, -(-(rows[-1] + 1) // b) * b)
            x0, x1 = cols[0] // b * b, min(self.width, -(-(cols[-1] + 1) // b) * b)
            box = (x0, y0, x1, y1)
        if self._previous is not None:
            px0, py0, px1, py1 = self._previous
            box = (px0, py0, px1, py1) if box is None else (
                min(box[0], px0), min(box[1], py0), max(box[2], px1), max(box[3], py1))
        if box is None:
            return False, None
        x0, y0, x1, y1 = box
        if (x1 - x0) * (y1 - y0) > self.full_share * self.width * self.height:
            self._reference = luma.copy()
            self._previous = None
            return True, (0, 0, self.width, self.height)
        # A box whose pixels all went back to the reference is sent once more, then dropped.
        self._previous = (x0, y0, x1, y1) if len(rows) else None
        return False, (x0, y0, x1 - x0, y1 - y0)


def voice_message(utterance_id: str, media_time: float, audio: np.ndarray, audio_rate: int) -> bytes:
    """One chunk of an utterance's voice, int16 mono at `audio_rate`, to be heard from `media_time` on."""
    uid = utterance_id.encode()
    size = VOICE_HEADER.size + len(uid)
    size += size % 2  # the samples start on an even byte: a page can view them as an Int16Array
    header = VOICE_HEADER.pack(KIND_VOICE, 0, size, media_time, audio_rate, len(audio), len(uid))
    return header + uid + b"\0" * (size - VOICE_HEADER.size - len(uid)) + audio.astype("<i2").tobytes()


def downsample(pcm: np.ndarray, step: int) -> np.ndarray:
    """int16 audio at 1/step of its rate: the mean of each group of `step` samples (the voice has
    next to nothing above 12 kHz to fold back), so every tick keeps exactly its share of samples."""
    return pcm.reshape(-1, step).mean(axis=1).astype(np.int16) if step > 1 else pcm


def jpeg_of(yuv: np.ndarray, height: int, box: tuple[int, int, int, int], quality: int) -> bytes:
    """The JPEG of `box` (x, y, w, h; even) of a packed yuv420p picture, coded from YCbCr as is."""
    x, y, w, h = box
    width = yuv.shape[1]
    luma = yuv[y : y + h, x : x + w]
    quarter = (height // 2) * (width // 2)
    chroma = yuv[height:].reshape(-1)
    u = chroma[:quarter].reshape(height // 2, width // 2)[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
    v = chroma[quarter : 2 * quarter].reshape(height // 2, width // 2)[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
    ycbcr = np.dstack([luma, u.repeat(2, 0).repeat(2, 1), v.repeat(2, 0).repeat(2, 1)])
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(ycbcr), mode="YCbCr").save(out, format="JPEG", quality=quality)
    return out.getvalue()


class FaceStreamEncoder(EncodeThread):
    """An AVSink: each tick's changed region as JPEG and its audio, handed to `deliver` from the
    encoder thread (which must not block).

    With carries_audio False (a viseme session, whose voice goes ahead in voice messages) the
    ticks carry no audio, and a talking tick with the same blank picture is as still as an idle one.
    """

    name = "face-stream"
    # A still, silent tick sends nothing but the keep-alive once a second: the clock may rest.
    rests_when_still = True

    def __init__(self, width: int, height: int, fps: int, sample_rate: int, deliver: Callable[[FaceTick], None],
                 *, quality: int = 80, audio_rate: int = 24_000, backlog: int = 10,
                 carries_audio: bool = True) -> None:
        super().__init__(backlog)
        self.width, self.height, self.fps = width, height, fps
        self.quality = quality
        self.audio_rate = audio_rate
        self._deliver = deliver
        self._regions = RegionTracker(width, height)
        if sample_rate % audio_rate or (sample_rate // fps) % (sample_rate // audio_rate):
            raise ValueError(f"the face stream's audio rate must divide {sample_rate} Hz into whole ticks")
        self.step = sample_rate // audio_rate  # input samples to one sample sent
        self.carries_audio = carries_audio
        self._silence = np.zeros(0, dtype=np.int16)
        self._restart = False
        self._last_sent = -fps
        self._last_video: object = None
        self.bytes_jpeg = 0
        self.start()

    def send_full_picture(self) -> None:
        """The next tick carries the whole picture (a client (re)joined)."""
        self._restart = True

    def push(self, tick: int, frame: AVFrame) -> None:
        # The very same picture as the tick before, and silence: nothing to do, and no reason to
        # wake the encoder thread (a viseme session's blank frame, an unchanging pattern).
        same = frame.video is self._last_video
        self._last_video = frame.video
        if same and not self._restart and tick - self._last_sent < self.fps and not self._sounds(frame):
            return
        super().push(tick, frame)

    def encode(self, tick: int, frame: AVFrame) -> None:
        if self._restart:
            self._restart = False
            self._regions.reset()
        full, box = self._regions.update(frame.video)
        if box is None and not self._sounds(frame) and tick - self._last_sent < self.fps:
            # Nothing to see or hear: no message (a still, silent avatar costs nothing to send),
            # but one a second, so the client knows the clock is going.
            return
        self._last_sent = tick
        jpeg = jpeg_of(frame.video, self.height, box, self.quality) if box is not None else b""
        self.bytes_jpeg += len(jpeg)
        audio = downsample(frame.audio, self.step) if self.carries_audio else self._silence
        self._deliver(FaceTick(tick, tick / self.fps, full, box, jpeg, audio, frame.is_speech))

    def _sounds(self, frame: AVFrame) -> bool:
        return self.carries_audio and bool(frame.audio.any())
