"""Lip-sync accuracy of the default renderer, measured on re-detected frames, plus renderer speeds.

    python bench/bench_lipsync.py                    # 8 sentences at 25 fps, speeds included
    python bench/bench_lipsync.py --sentences 6 --fps 30
    python bench/bench_lipsync.py --no-speed         # accuracy only

Accuracy (independent of the renderer's parameters): each test sentence is spoken by the
real Piper voice and rendered by the default photo-warp renderer on the astronaut; every
frame is converted to RGB (PyAV) and dlib re-detects the 68 landmarks; the mouth opening is
the inner-lip gap over the inner mouth width (models/lipsync/accuracy.py).

- closure: share of p/b/m phonemes with a closed-lip frame in their span (or one frame
  earlier, the renderers' 40 ms lead); "closed" comes from the photo's own rest opening.
- r: Pearson r over all speech frames between the re-detected opening and the expected
  openness (time-weighted `openness()` of the phonemes in each frame's window, smoothed).

Then diagnostics (per-sentence r, a lead scan, r without the frames around p/b/m, the
opening per expected-openness bin), a scatter plot and a contact sheet of one sentence,
and frames/s of the photo renderer (1 thread, batch 4) and of the Wav2Lip renderer with
random weights (batch 16, 1 and 2 threads; CUDA when available).

Writes bench/out/lipsync.json, bench/out/lipsync_contact_sheet.png, bench/out/lipsync_scatter.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.avatar.landmarks import LandmarkDetector  # noqa: E402
from models.avatar.photo import PhotoAvatar, load_default_avatar  # noqa: E402
from models.lipsync.accuracy import (  # noqa: E402
    CLOSED_RULE,
    LipSyncAccuracy,
    OpeningMeter,
    SentenceMeasurement,
    expected_openness,
    frame_times,
    is_closure_phoneme,
    pearson,
    speech_mask,
    summarise,
    yuv420p_to_rgb,
)
from models.lipsync.mouth import BITE, PRESS  # noqa: E402
from models.lipsync.photo_warp import PhotoWarpRenderer  # noqa: E402
from models.speech import SpeechChunk  # noqa: E402
from models.tts import PiperTTS  # noqa: E402

OUT = ROOT / "bench" / "out"
CLOSURE_TARGET = 0.95
R_TARGET = 0.8
# Rich in p/b/m closures and open vowels; the first one goes on the contact sheet.
SENTENCES = (
    "Bob bought a big map of the moon.",
    "Papa made Mom a pumpkin pie.",
    "I saw a large dark car.",
    "Please bring me maple bread.",
    "My brother Bob swam past the palm beach.",
    "Father wants a hot cup of coffee.",
    "Maybe Bobby can buy a bigger boat.",
    "Grandpa parked the van by the barn.",
    "Ma and Pa had a mop and a broom.",
    "A bumble bee bumped my arm.",
)
# IPA -> ASCII (X-SAMPA style) for the contact sheet: PIL's default font has no IPA glyphs.
_ASCII = {
    "ɑ": "A", "ɔ": "O", "ə": "@", "æ": "{", "ʌ": "V", "ɪ": "I", "ʊ": "U", "ŋ": "N", "ð": "D",
    "θ": "T", "ʃ": "S", "ʒ": "Z", "ɹ": "r", "ɡ": "g", "ɐ": "6", "ɚ": "@`", "ɜ": "3", "ɛ": "E",
    "ɾ": "4", "ʔ": "?", "ᵻ": "1", "ɬ": "K", "ɒ": "Q", "ɫ": "l",
}


# ---------------------------------------------------------------------------------------
# Accuracy


def measure_sentences(tts: PiperTTS, accuracy: LipSyncAccuracy, texts: list[str]) -> list[SentenceMeasurement]:
    out = []
    for k, text in enumerate(texts):
        chunks = list(tts.synthesize(text))
        if len(chunks) != 1 or not chunks[0].phonemes:
            raise RuntimeError(f"expected one aligned chunk for {text!r}, got {len(chunks)}")
        out.append(accuracy.measure(chunks[0], keep_frames=k == 0))
    return out


def closure_window_frames(m: SentenceMeasurement, lead: float) -> np.ndarray:
    """Frames whose lead-shifted 1/fps window overlaps a p/b/m span."""
    n = len(m.openings)
    t = frame_times(n, m.fps) + lead
    half = 0.5 / m.fps
    mask = np.zeros(n, dtype=bool)
    for p in m.phonemes:
        if is_closure_phoneme(p.phoneme):
            mask |= (t + half > p.start) & (t - half < p.end)
    return mask


def diagnostics(ms: list[SentenceMeasurement], lead: float, threshold: float, rest: float) -> dict:
    """Where the independent r loses: alignment, the frames around closures, the opening curve."""
    def pooled(pick) -> float:
        pairs = [pick(m) for m in ms]
        return pearson(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))

    def shifted(m: SentenceMeasurement, shift: float, smooth: bool = True):
        n = len(m.openings)
        keep = speech_mask(m.phonemes, n, m.fps, shift)
        return m.openings[keep], expected_openness(m.phonemes, n, m.fps, shift, smooth)[keep]

    lead_scan = {f"{s * 1000:.0f}ms": pooled(lambda m, s=s: shifted(m, s)) for s in (0.0, 0.02, 0.04, 0.06, 0.08)}
    unsmoothed = pooled(lambda m: shifted(m, lead, smooth=False))

    def without_closures(m: SentenceMeasurement):
        keep = m.speech & ~closure_window_frames(m, lead)
        return m.openings[keep], m.expected[keep]

    def closures_closed(m: SentenceMeasurement):
        e = m.expected.copy()
        e[closure_window_frames(m, lead)] = 0.0
        return m.openings[m.speech], e[m.speech]

    opening = np.concatenate([m.openings[m.speech] for m in ms])
    expected = np.concatenate([m.expected[m.speech] for m in ms])
    near = np.concatenate([closure_window_frames(m, lead)[m.speech] for m in ms])
    bins = []
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.01]
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = (expected >= lo) & (expected < hi)
        if k.any():
            bins.append({
                "expected": f"{lo:.1f}-{min(hi, 1.0):.1f}", "frames": int(k.sum()),
                "opening_mean": float(np.nanmean(opening[k])), "opening_sd": float(np.nanstd(opening[k])),
                "closure_window_frames": int((k & near).sum()),
            })
    closed = opening <= threshold
    own = [m for m in ms if m.renderer_track is not None]
    r_no_press_bite = None
    if own:
        # Not independent: drop frames where the renderer's own track presses or bites at all.
        def plain(m: SentenceMeasurement):
            keep = m.speech & (m.renderer_track[:, PRESS] <= 0.05) & (m.renderer_track[:, BITE] <= 0.05)
            return m.openings[keep], m.expected[keep]

        def no_press(m: SentenceMeasurement):
            keep = m.speech & (m.renderer_track[:, PRESS] <= 0.05)
            return m.openings[keep], m.expected[keep]

        r_no_press_bite = {"without_press_frames": pooled(no_press), "without_press_or_bite_frames": pooled(plain)}
    rest_in_speech = None
    if own:
        # Frames the renderer drives at open ~0 that are not closures: the photo's rest pose shows.
        o = np.concatenate([m.openings[m.speech] for m in own])
        w = np.concatenate([m.renderer_open[m.speech] for m in own])
        nr = np.concatenate([closure_window_frames(m, lead)[m.speech] for m in own])
        k = (w < 0.05) & ~nr
        rest_in_speech = {"frames": int(k.sum()), "opening_mean": float(np.nanmean(o[k])) if k.any() else None}
    return {
        "per_sentence_r": {m.text: m.r for m in ms},
        "lead_scan_r": lead_scan,
        "r_unsmoothed_expected": unsmoothed,
        "r_without_closure_window_frames": pooled(without_closures),
        "r_with_closure_windows_expected_closed": pooled(closures_closed),
        "spearman_r": _spearman(opening, expected),
        "closure_window_frames": int(near.sum()),
        "closed_frames": int(closed.sum()),
        "closed_frames_in_closure_windows": int((closed & near).sum()),
        "expected_on_closed_frames_mean": float(expected[closed].mean()) if closed.any() else None,
        "photo_rest_opening": rest,
        "renderer_open0_non_closure_frames": rest_in_speech,
        "not_independent_r_excluding_renderer_press_bite": r_no_press_bite,
        "opening_by_expected_bin": bins,
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    ranks = [np.argsort(np.argsort(x[ok], kind="stable"), kind="stable").astype(float) for x in (a, b)]
    return pearson(*ranks)


# ---------------------------------------------------------------------------------------
# Pictures


def _ascii_phones(symbols: list[str]) -> str:
    out = []
    for s in symbols:
        for c in unicodedata.normalize("NFD", s):
            if c.isascii() and c.isalpha():
                out.append(c)
            elif c in _ASCII:
                out.append(_ASCII[c])
            elif c == "ː":
                out.append(":")
    return " ".join(out)


def phones_at(m: SentenceMeasurement, i: int, lead: float) -> str:
    """The phones of the timings in frame i's lead-shifted window, as ASCII."""
    t = (i + 0.5) / m.fps + lead
    half = 0.5 / m.fps
    return _ascii_phones([p.phoneme for p in m.phonemes if p.end > t - half and p.start < t + half])


def lower_face_box(avatar: PhotoAvatar) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around the nose tip, mouth and chin of the photo, with a margin."""
    p = avatar.landmarks
    w = float(np.linalg.norm(p[54] - p[48]))
    x0, x1 = p[4, 0] - 0.1 * w, p[12, 0] + 0.1 * w
    y0, y1 = p[30, 1] - 0.1 * w, p[8, 1] + 0.35 * w
    return (max(0, int(x0)), max(0, int(y0)), min(avatar.width, int(x1)), min(avatar.height, int(y1)))


def contact_sheet(m: SentenceMeasurement, avatar: PhotoAvatar, threshold: float, lead: float, path: Path,
                  step: int = 2, scale: int = 2, cols: int = 6) -> int:
    """Every `step`-th frame of one sentence, cropped around the lower face, labelled; returns the tile count."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    x0, y0, x1, y1 = lower_face_box(avatar)
    # Frame -> whether every p/b/m it was judged for passed (on this frame or its neighbour).
    judged: dict[int, bool] = {}
    for c in m.closures:
        for i in c.frames:
            judged[i] = judged.get(i, True) and c.closed
    tiles = []
    for i in range(0, len(m.frames), step):
        rgb = yuv420p_to_rgb(m.frames[i])[y0:y1, x0:x1]
        tile = Image.fromarray(rgb).resize(((x1 - x0) * scale, (y1 - y0) * scale), Image.LANCZOS)
        draw = ImageDraw.Draw(tile)
        pts = m.points[i]
        if np.isfinite(pts).all():
            for k in range(60, 68):  # the re-detected inner lip, as the measurement saw it
                x, y = (pts[k] - (x0, y0)) * scale
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(0, 255, 255))
        opening = m.openings[i]
        closed = math.isfinite(opening) and opening <= threshold
        label = f"{(i + 0.5) / m.fps:.2f}s {phones_at(m, i, lead)}"
        status = f"open {opening:.2f}" + (" CLOSED" if closed else "") + (" [p/b/m]" if i in judged else "")
        draw.rectangle((0, 0, tile.width, 30), fill=(0, 0, 0))
        draw.text((3, 2), label, fill=(255, 255, 255), font=font)
        draw.text((3, 16), status, fill=(120, 255, 120) if closed else (255, 200, 120), font=font)
        if i in judged:
            passed = judged[i]
            draw.rectangle((0, 0, tile.width - 1, tile.height - 1), outline=(0, 255, 0) if passed else (255, 0, 0), width=3)
        tiles.append(np.asarray(tile))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)]
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    title = Image.new("RGB", (sheet.width, 34), (0, 0, 0))
    caption = (
        f'"{m.text}" every {step} frames at {m.fps} fps. Label: frame time, phones heard {lead * 1000:.0f} ms later '
        "(X-SAMPA), re-detected opening.\nCyan: re-detected inner lip. Border: a frame judged for a p/b/m "
        "(green: that p/b/m closed here or in its other judged frame; red: it never closed)."
    )
    ImageDraw.Draw(title).multiline_text((4, 3), caption, fill=(255, 255, 255), font=font, spacing=3)
    out = Image.new("RGB", (sheet.width, sheet.height + title.height))
    out.paste(title, (0, 0))
    out.paste(sheet, (0, title.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return len(range(0, len(m.frames), step))


def scatter_plot(ms: list[SentenceMeasurement], lead: float, threshold: float, path: Path, size: int = 420) -> None:
    """Expected openness (x) against re-detected opening (y); red: frames whose window overlaps a p/b/m."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad = 40
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    y_max = 0.5

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + x * size, pad + size - min(y, y_max) / y_max * size

    draw.rectangle((pad, pad, pad + size, pad + size), outline=(0, 0, 0))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = at(v, 0)
        draw.text((x - 8, pad + size + 4), f"{v:.2f}", fill=(0, 0, 0), font=font)
    for v in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        _, y = at(0, v)
        draw.text((4, y - 6), f"{v:.1f}", fill=(0, 0, 0), font=font)
    _, yt = at(0, threshold)
    draw.line((pad, yt, pad + size, yt), fill=(0, 160, 0))
    for m in ms:
        near = closure_window_frames(m, lead)
        for i in np.flatnonzero(m.speech):
            if not math.isfinite(m.openings[i]):
                continue
            x, y = at(float(m.expected[i]), float(m.openings[i]))
            colour = (220, 30, 30) if near[i] else (30, 60, 220)
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    draw.text((pad, 8), "x: expected openness (phonemes)   y: re-detected opening (dlib)", fill=(0, 0, 0), font=font)
    draw.text((pad, 22), "red: window overlaps p/b/m   green line: closed threshold", fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ---------------------------------------------------------------------------------------
# Speed


def _timed_batches(render, n_frames: int, batch: int, seconds: float) -> float:
    """frames/s of render(start, count) over consecutive batches: median of 3 timed stretches."""
    render(0, min(batch, n_frames))  # warm-up: first calls allocate
    runs = []
    start_frame = 0
    for _ in range(3):
        done, t0 = 0, time.perf_counter()
        while True:
            if start_frame + batch > n_frames:
                start_frame = 0
            render(start_frame, batch)
            start_frame += batch
            done += batch
            if time.perf_counter() - t0 >= seconds / 3 and done >= batch:
                break
        runs.append(done / (time.perf_counter() - t0))
    return statistics.median(runs)


def long_speech(tts: PiperTTS, texts: list[str]) -> SpeechChunk:
    """One chunk with phoneme timings, long enough for several batches (the sentences joined)."""
    chunks = [c for t in texts for c in tts.synthesize(t)]
    audio = np.concatenate([c.audio for c in chunks])
    phonemes, offset = [], 0.0
    from models.speech import PhonemeTiming

    for c in chunks:
        phonemes += [PhonemeTiming(p.phoneme, p.start + offset, p.end + offset) for p in c.phonemes or ()]
        offset += c.duration
    return SpeechChunk(" ".join(texts), audio, chunks[0].sample_rate, tuple(phonemes))


def random_wav2lip_checkpoint(folder: Path) -> Path:
    """A loadable Wav2Lip generator file with random weights (speed does not depend on them)."""
    from models.lipsync.wav2lip_net import Wav2LipNet

    torch.manual_seed(0)
    state = {"module." + k: v for k, v in Wav2LipNet().state_dict().items()}
    path = folder / "random_wav2lip.pth"
    torch.save({"state_dict": state}, path)
    return path


def speeds(avatar: PhotoAvatar, speech: SpeechChunk, fps: int, seconds: float) -> dict:
    from models.lipsync.wav2lip_renderer import Wav2LipRenderer

    out: dict = {"cpu_count": os.cpu_count(), "load_average_before": list(os.getloadavg())}
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other processes share these cores)")
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        photo = PhotoWarpRenderer(avatar, fps=fps, device="cpu")
        source = photo.begin(speech, 0)
        out["photo_cpu_1thread_batch4_fps"] = _timed_batches(source.render, source.n_frames, 4, seconds)
        print(f"photo-warp renderer, CPU, 1 thread, batch 4: {out['photo_cpu_1thread_batch4_fps']:.0f} frames/s")

        with tempfile.TemporaryDirectory() as folder:
            checkpoint = random_wav2lip_checkpoint(Path(folder))
            for threads in (1, 2):
                torch.set_num_threads(threads)
                neural = Wav2LipRenderer(avatar.rgb, avatar.face_box, checkpoint, fps=fps, device="cpu", batch_size=16)
                src = neural.begin(speech, 0)
                rate = _timed_batches(src.render, src.n_frames, 16, seconds)
                out[f"wav2lip_cpu_{threads}thread_batch16_fps"] = rate
                print(f"Wav2Lip renderer (random weights), CPU, {threads} thread(s), batch 16: {rate:.1f} frames/s")
            if torch.cuda.is_available():
                photo_cuda = PhotoWarpRenderer(avatar, fps=fps, device="cuda")
                src = photo_cuda.begin(speech, 0)
                for batch in (4, 16):
                    out[f"photo_cuda_batch{batch}_fps"] = _timed_batches(src.render, src.n_frames, batch, seconds)
                    print(f"photo-warp renderer, CUDA, batch {batch}: {out[f'photo_cuda_batch{batch}_fps']:.0f} frames/s")
                neural = Wav2LipRenderer(avatar.rgb, avatar.face_box, checkpoint, fps=fps, device="cuda", batch_size=16)
                src = neural.begin(speech, 0)
                out["wav2lip_cuda_batch16_fps"] = _timed_batches(src.render, src.n_frames, 16, seconds)
                out["cuda_device"] = torch.cuda.get_device_name(0)
                print(f"Wav2Lip renderer, CUDA fp16, batch 16: {out['wav2lip_cuda_batch16_fps']:.0f} frames/s")
            else:
                out["cuda"] = "skipped: torch.cuda.is_available() is False"
                print("CUDA: skipped (torch.cuda.is_available() is False on this machine)")
    finally:
        torch.set_num_threads(threads_before)
    return out


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=8, help=f"how many test sentences (1-{len(SENTENCES)}, default 8)")
    parser.add_argument("--fps", type=int, default=25, help="video frame rate (default 25)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per speed figure (default 6)")
    parser.add_argument("--no-speed", action="store_true", help="skip the renderer speed figures")
    args = parser.parse_args()
    if not 1 <= args.sentences <= len(SENTENCES):
        parser.error(f"--sentences must be between 1 and {len(SENTENCES)}")
    if args.fps <= 0:
        parser.error("--fps must be positive")

    torch.set_num_threads(1)  # dlib is single-threaded; keep the renderer on one core too
    t0 = time.perf_counter()
    tts = PiperTTS()
    tts.warmup()
    detector = LandmarkDetector(upsample=0)
    avatar = load_default_avatar(detector)
    renderer = PhotoWarpRenderer(avatar, fps=args.fps, device="cpu")
    accuracy = LipSyncAccuracy.for_photo(renderer, avatar, OpeningMeter(detector))
    lead = accuracy.lead
    print(f"set-up {time.perf_counter() - t0:.1f} s; avatar {avatar.name} {avatar.width}x{avatar.height}, "
          f"photo opening at rest {accuracy.rest_opening:.3f}, mouth {inner_width(avatar):.0f} px wide")
    print(f"rule: {CLOSED_RULE} -> closed threshold {accuracy.threshold:.3f}")

    texts = list(SENTENCES[: args.sentences])
    t1 = time.perf_counter()
    ms = measure_sentences(tts, accuracy, texts)
    elapsed = time.perf_counter() - t1
    summary = summarise(ms)
    n_frames = summary.frames
    print(f"measured {len(ms)} sentences, {n_frames} frames in {elapsed:.1f} s "
          f"({1000 * elapsed / max(1, n_frames):.0f} ms/frame: TTS + render + RGB + dlib)\n")

    print(f"{'sentence':44s} {'frames':>6} {'p/b/m closed':>12} {'r':>6} {'r(open)*':>8}")
    sentences_json = []
    for m in ms:
        closed = sum(c.closed for c in m.closures)
        r_own = pearson(m.openings[m.speech], m.renderer_open[m.speech]) if m.renderer_open is not None else math.nan
        print(f"{m.text:44s} {len(m.openings):>6} {closed:>5}/{len(m.closures):<6} {m.r:>6.2f} {r_own:>8.2f}")
        failed = [c for c in m.closures if not c.closed]
        for c in failed:
            k = next(j for j, p in enumerate(m.phonemes) if p.start == c.start and p.phoneme == c.phoneme)
            context = " ".join(f"{p.phoneme!r}@{p.start:.3f}" for p in m.phonemes[max(0, k - 2): k + 2])
            first = max(0, c.frames[0] - 2)
            print(f"    open p/b/m: {c.phoneme!r} {c.start:.3f}-{c.end:.3f} s ({context}), frames {list(c.frames)}, "
                  f"min opening {c.opening:.3f} > {accuracy.threshold:.3f}; openings of frames {first}..: "
                  f"{np.round(m.openings[first: c.frames[-1] + 3], 3).tolist()}")
        sentences_json.append({
            "text": m.text, "frames": len(m.openings), "speech_frames": int(m.speech.sum()),
            "closures": len(m.closures), "closed": closed, "r": m.r, "r_renderer_open_not_independent": r_own,
            "failed_closures": [
                {"phoneme": c.phoneme, "start": c.start, "end": c.end, "frames": list(c.frames), "opening": c.opening}
                for c in failed
            ],
        })
    print("* r(open): against the renderer's own `open` parameter - NOT independent, for context only\n")

    share = summary.closure_share
    print(f"closure: {summary.closed}/{summary.closures} p/b/m closed = {share:.1%} "
          f"(target >= {CLOSURE_TARGET:.0%}: {'met' if share >= CLOSURE_TARGET else 'NOT met'})")
    print(f"correlation: r = {summary.r:.3f} over {summary.speech_frames} speech frames "
          f"(target >= {R_TARGET}: {'met' if summary.r >= R_TARGET else 'NOT met'})")
    print("  expected openness: each frame's 40 ms window of phoneme openness (visemes.openness), 1-2-1 smoothed,\n"
          "  with the frame at each p/b/m expected closed (a bilabial is a closure however short)")
    print(f"  for context, NOT independent: r against the renderer's own `open` parameter = {summary.r_renderer_open:.3f}")
    if summary.missed_detections:
        print(f"  dlib found no face in {summary.missed_detections} frames (counted as open)")

    diag = diagnostics(ms, lead, accuracy.threshold, accuracy.rest_opening)
    print("\ndiagnostics")
    print("  lead scan (r with the expected track shifted by): "
          + ", ".join(f"{k} {v:.3f}" for k, v in diag["lead_scan_r"].items()))
    print(f"  r with an unsmoothed expected track: {diag['r_unsmoothed_expected']:.3f}; Spearman: {diag['spearman_r']:.3f}")
    print(f"  r without the {diag['closure_window_frames']} frames whose window overlaps a p/b/m: "
          f"{diag['r_without_closure_window_frames']:.3f}")
    print(f"  r with those frames expected closed (0): {diag['r_with_closure_windows_expected_closed']:.3f}")
    print(f"  closed frames (<= threshold): {diag['closed_frames']}, of which in a p/b/m window: "
          f"{diag['closed_frames_in_closure_windows']}; mean expected openness on them: "
          f"{diag['expected_on_closed_frames_mean']:.2f}")
    pb = diag["not_independent_r_excluding_renderer_press_bite"]
    if pb:
        print(f"  NOT independent (uses the renderer's track): r without frames where it presses (PRESS > 0.05) "
              f"{pb['without_press_frames']:.3f}; without press or bite (f/v) frames {pb['without_press_or_bite_frames']:.3f}")
    rest_frames = diag["renderer_open0_non_closure_frames"]
    if rest_frames and rest_frames["frames"]:
        print(f"  renderer open~0 outside p/b/m windows: {rest_frames['frames']} frames, re-detected opening "
              f"{rest_frames['opening_mean']:.3f} (photo at rest {accuracy.rest_opening:.3f}; a closure reads ~0.02)")
    print("  re-detected opening per expected-openness bin:")
    for b in diag["opening_by_expected_bin"]:
        print(f"    expected {b['expected']}: {b['frames']:>4} frames, opening {b['opening_mean']:.3f} "
              f"+- {b['opening_sd']:.3f} ({b['closure_window_frames']} in p/b/m windows)")

    OUT.mkdir(parents=True, exist_ok=True)
    sheet_path = OUT / "lipsync_contact_sheet.png"
    tiles = contact_sheet(ms[0], avatar, accuracy.threshold, lead, sheet_path)
    scatter_path = OUT / "lipsync_scatter.png"
    scatter_plot(ms, lead, accuracy.threshold, scatter_path)
    print(f"\ncontact sheet: {sheet_path.relative_to(ROOT)} ({tiles} tiles of {ms[0].text!r}); "
          f"scatter: {scatter_path.relative_to(ROOT)}")

    speed = {}
    if not args.no_speed:
        print("\nrenderer speed on this CPU")
        speed = speeds(avatar, long_speech(tts, texts[:3]), args.fps, args.seconds)

    result = {
        "command": "python3 bench/bench_lipsync.py " + " ".join(sys.argv[1:]),
        "fps": args.fps,
        "renderer": "photo_warp",
        "avatar": avatar.name,
        "lead_s": lead,
        "closed_rule": CLOSED_RULE,
        "photo_rest_opening": accuracy.rest_opening,
        "closed_threshold": accuracy.threshold,
        "closure_share": share,
        "closures": summary.closures,
        "closed": summary.closed,
        "r": summary.r,
        "r_renderer_open_not_independent": summary.r_renderer_open,
        "targets": {"closure_share": CLOSURE_TARGET, "r": R_TARGET},
        "frames": summary.frames,
        "speech_frames": summary.speech_frames,
        "missed_detections": summary.missed_detections,
        "sentences": sentences_json,
        "diagnostics": diag,
        "speed": speed,
        "contact_sheet": str(sheet_path.relative_to(ROOT)),
        "scatter": str(scatter_path.relative_to(ROOT)),
    }
    json_path = OUT / "lipsync.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"\nwrote {json_path.relative_to(ROOT)}")


def inner_width(avatar: PhotoAvatar) -> float:
    return float(np.linalg.norm(avatar.landmarks[64] - avatar.landmarks[60]))


if __name__ == "__main__":
    main()
