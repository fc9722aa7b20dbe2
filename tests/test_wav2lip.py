"""Wav2Lip-compatible renderer: checkpoint layout, loading and refusal, mel front end, rendering."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.lipsync.mel import MelFrontEnd, hz_to_mel, mel_filterbank, mel_windows
from models.lipsync.wav2lip_checkpoint import CheckpointError, load_wav2lip_checkpoint
from models.lipsync.wav2lip_net import Wav2LipNet
from models.lipsync.wav2lip_renderer import CHIN_PAD, Wav2LipRenderer
from models.speech import SpeechChunk

# Real models (and for some, real peers and servers): the full tier, not `-m "not slow"`.
pytestmark = pytest.mark.slow

# The key list of the public checkpoints, enumerated from Wav2Lip's model definition (kept in
# the repository so the test needs nothing beside it).
REFERENCE_LAYOUT = Path(__file__).resolve().parent / "data" / "wav2lip_state_dict.txt"
PUBLIC_PARAMETERS = 36_298_035
PUBLIC_ENTRIES = 352


def _parse_layout(text: str) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+)\s+\(([\d,\s]*)\)", line)
        assert match, f"unparsable layout line: {line!r}"
        dims = tuple(int(d) for d in match.group(2).replace(" ", "").split(",") if d)
        entries.append((match.group(1), dims))
    return entries


def _public_layout(net: Wav2LipNet) -> list[tuple[str, tuple[int, ...]]]:
    return [("module." + k, tuple(v.shape)) for k, v in net.state_dict().items()]


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    """A full generator state dict with deterministic random weights and BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in Wav2LipNet().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=value.dtype)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith("conv_block.1.weight"):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() > 1:
            transposed = re.match(r"face_decoder_blocks\.[1-6]\.0\.", key) is not None  # (cin, cout, k, k)
            fan_in = value.shape[0] * value[0, 0].numel() if transposed else value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (1.0 / fan_in) ** 0.5
        else:
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
    # A random net's output is a nearly flat grey; a stronger last layer makes the face and
    # audio dependence visible in 8-bit pixels.
    state["output_block.1.weight"] *= 20.0
    return state


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save like the public files: torch 1.x legacy pickle format, DataParallel keys, optimizer state."""
    optimizer = {"state": {0: {"step": 10, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                   "amsgrad": False, "params": list(range(len(state)))}]}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": optimizer,
                "global_step": 10, "global_epoch": 1}, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return _random_state(seed=7)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    return _save(state, tmp_path_factory.mktemp("w2l") / "wav2lip.pth")


# --- (1) architecture layout -------------------------------------------------------------

def test_layout_matches_public_checkpoint_size() -> None:
    net = Wav2LipNet()
    assert len(net.state_dict()) == PUBLIC_ENTRIES
    assert sum(p.numel() for p in net.parameters()) == PUBLIC_PARAMETERS


def test_layout_matches_reference_key_list() -> None:
    reference = _parse_layout(REFERENCE_LAYOUT.read_text())
    ours = _public_layout(Wav2LipNet())
    assert len(reference) == PUBLIC_ENTRIES
    for (ref_key, ref_shape), (key, shape) in zip(reference, ours):
        assert (key, shape) == (ref_key, ref_shape)
    assert ours == reference


def test_forward_shapes_for_4d_and_5d_inputs() -> None:
    net = Wav2LipNet().eval()
    with torch.inference_mode():
        out5 = net(torch.zeros(1, 2, 1, 80, 16), torch.zeros(1, 6, 2, 96, 96))
    assert out5.shape == (1, 3, 2, 96, 96)


# --- (2) loading ------------------------------------------------------------------------

def test_public_layout_checkpoint_loads_and_runs(checkpoint: Path, state: dict[str, torch.Tensor]) -> None:
    net = load_wav2lip_checkpoint(checkpoint, "cpu")
    assert not net.training
    loaded = net.state_dict()
    for key in ("face_encoder_blocks.0.0.conv_block.0.weight", "face_decoder_blocks.1.0.conv_block.0.weight",
                "audio_encoder.12.conv_block.1.running_var", "output_block.1.bias"):
        assert torch.equal(loaded[key], state[key]), key
    gen = torch.Generator().manual_seed(0)
    mels = torch.rand(16, 1, 80, 16, generator=gen) * 8 - 4
    faces = torch.rand(16, 6, 96, 96, generator=gen)
    with torch.inference_mode():
        out = net(mels, faces)
    assert out.shape == (16, 3, 96, 96)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.0


def test_bare_state_dict_without_prefix_loads(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "bare.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    net = load_wav2lip_checkpoint(path, "cpu")
    assert torch.equal(net.state_dict()["output_block.1.weight"], state["output_block.1.weight"])


# --- (3) refusals -----------------------------------------------------------------------

def _refusal(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    with pytest.raises(CheckpointError) as info:
        load_wav2lip_checkpoint(_save(state, tmp_path / "bad.pth"), "cpu")
    message = str(info.value)
    assert "wav2lip.pth" in message and "wav2lip_gan.pth" in message  # the fix is named
    return message


def test_missing_key_is_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    broken = dict(state)
    del broken["face_decoder_blocks.3.1.conv_block.0.weight"]
    message = _refusal(tmp_path, broken)
    assert "missing key 'face_decoder_blocks.3.1.conv_block.0.weight'" in message


def test_wrong_shape_is_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    broken = dict(state)
    broken["audio_encoder.3.conv_block.0.weight"] = torch.zeros(64, 32, 5, 5)
    message = _refusal(tmp_path, broken)
    assert "'audio_encoder.3.conv_block.0.weight'" in message
    assert "(64, 32, 5, 5)" in message and "(64, 32, 3, 3)" in message


def test_extra_key_is_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    broken = dict(state)
    broken["face_encoder_blocks.7.0.conv_block.0.weight"] = torch.zeros(512, 512, 4, 4)
    message = _refusal(tmp_path, broken)
    assert "unexpected key 'face_encoder_blocks.7.0.conv_block.0.weight'" in message
    assert "wav2lip256" in message


def test_pickled_objects_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        load_wav2lip_checkpoint(path, "cpu")


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_wav2lip_checkpoint(path, "cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_wav2lip_checkpoint(tmp_path / "absent.pth", "cpu")


# --- (5) mel front end ------------------------------------------------------------------

def _tone(seconds: float, sample_rate: int) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(3)
    wave = 0.4 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave += 0.05 * rng.standard_normal(len(t))
    return (np.clip(wave, -1, 1) * 32767).astype(np.int16)


def test_mel_shape_range_and_windows() -> None:
    front = MelFrontEnd()
    mel = front(_tone(1.0, 22050), 22050)
    assert mel.shape == (80, 81)  # centred STFT: 1 + 16000 // 200 frames
    assert mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    assert mel.max() - mel.min() > 2.0  # a real spectrum, not a constant
    silence = front(np.zeros(16000, dtype=np.int16), 16000)
    assert np.all(silence == -4.0)

    windows = mel_windows(mel, 25, fps=25)
    assert windows.shape == (25, 1, 80, 16)
    assert np.array_equal(windows[1, 0], mel[:, 3:19])  # int(1 * 3.2) = 3
    assert np.array_equal(windows[10, 0], mel[:, 32:48])
    assert np.array_equal(windows[24, 0], mel[:, 65:81])  # int(76.8) = 76 runs past: clamped to the end
    short = mel_windows(mel[:, :5], 2)
    assert short.shape == (2, 1, 80, 16) and np.all(short[:, :, :, 5:] == -4.0)


def test_mel_puts_a_tone_in_its_band() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t) * 32767).astype(np.int16)
    mel = MelFrontEnd()(tone, rate)
    band_edges = np.linspace(hz_to_mel(55.0), hz_to_mel(7600.0), 82)
    expected = int(np.argmin(np.abs(band_edges[1:-1] - hz_to_mel(1000.0))))  # band centred nearest 1 kHz
    loudest = int(np.argmax(mel[:, 5:-5].mean(axis=1)))
    assert abs(loudest - expected) <= 1
    assert mel[loudest, 5:-5].mean() > mel[:, 5:-5].mean(axis=1)[np.r_[0:10, 60:80]].max() + 2.0


def test_mel_matches_librosa_reference_values() -> None:
    # Reference numbers computed once with librosa 0.11 (filters.mel(sr=16000, n_fft=800,
    # n_mels=80, fmin=55, fmax=7600); stft(..., pad_mode="reflect") of the preemphasised
    # signal), i.e. the recipe the checkpoints were trained with; librosa is not a dependency.
    bank = mel_filterbank()
    for band, total, peak_bin, peak in ((0, 0.049364086, 5, 0.020812450), (20, 0.049364083, 40, 0.020181429),
                                        (40, 0.049923554, 86, 0.014343159), (79, 0.049979556, 366, 0.003635340)):
        assert bank[band].sum() == pytest.approx(total, rel=1e-5)
        assert int(bank[band].argmax()) == peak_bin
        assert bank[band].max() == pytest.approx(peak, rel=1e-5)
    t = np.arange(8000) / 16000
    mel = MelFrontEnd().from_16k((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert mel.shape == (80, 41)
    for band, frame, value in ((0, 0, -1.2161391), (10, 20, 1.6348057), (11, 20, 0.1356162), (30, 20, -4.0)):
        assert mel[band, frame] == pytest.approx(value, abs=1e-4)


def test_mel_filterbank_is_slaney_normalised() -> None:
    bank = mel_filterbank()
    assert bank.shape == (80, 401)
    assert np.all(bank >= 0)
    # Nothing below 55 Hz or above 7600 Hz (FFT bins are 20 Hz apart).
    assert not bank[:, :3].any() and not bank[:, 381:].any()
    # Each triangle has peak 2 / (band width in Hz), so wide high bands have low peaks.
    assert bank[0].max() > bank[-1].max()
    assert np.all(np.count_nonzero(bank, axis=1) >= 1)


# --- (4) rendering ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def avatar() -> np.ndarray:
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:240, 0:200]
    image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    image[60:180, 50:150] = rng.integers(90, 200, size=(120, 100, 3), dtype=np.uint8)
    return image


def test_renderer_speaks_a_second_in_25_frames_without_touching_the_background(
        checkpoint: Path, avatar: np.ndarray) -> None:
    torch.manual_seed(0)
    box = (51, 61, 149, 169)  # odd corners on purpose: the chroma blocks straddle the box edge
    renderer = Wav2LipRenderer(avatar, box, checkpoint, fps=25, device="cpu", batch_size=16)
    assert (renderer.width, renderer.height, renderer.fps) == (200, 240, 25)
    idle = renderer.idle_frame(0)
    assert idle.shape == (360, 200) and idle.dtype == np.uint8
    assert renderer.idle_frame(99) is idle

    # 0.4 s of silence, then a loud tone with noise: the mouth region must differ between them.
    audio = _tone(1.0, 22050) * 2
    audio[:int(0.4 * 22050)] = 0
    source = renderer.begin(SpeechChunk("hello", audio, 22050), tick=0)
    assert source.n_frames == 25
    frames = source.render(0, 25)
    assert len(frames) == 25

    x0, y0, x1, y1 = box[0], box[1], box[2], box[3] + CHIN_PAD
    outside_y = np.ones((240, 200), dtype=bool)
    outside_y[y0:y1, x0:x1] = False
    outside_c = np.ones((120, 100), dtype=bool)
    outside_c[y0 // 2:(y1 + 1) // 2, x0 // 2:(x1 + 1) // 2] = False
    changed = 0
    for frame in frames:
        assert frame.shape == (360, 200) and frame.dtype == np.uint8
        luma, u, v = frame[:240], frame[240:300].reshape(120, 100), frame[300:].reshape(120, 100)
        assert np.array_equal(luma[outside_y], idle[:240][outside_y])
        assert np.array_equal(u[outside_c], idle[240:300].reshape(120, 100)[outside_c])
        assert np.array_equal(v[outside_c], idle[300:].reshape(120, 100)[outside_c])
        changed += int(np.abs(luma[y0:y1, x0:x1].astype(int) - idle[:240][y0:y1, x0:x1]).max() > 8)
    assert changed == 25  # every frame has a regenerated lower face
    # The audio drives the output: a silent frame and a loud one differ in the mouth region.
    mouth = (slice(y0 + (y1 - y0) * 3 // 5, y1 - 10), slice(x0 + 20, x1 - 20))
    assert np.abs(frames[0][mouth].astype(int) - frames[24][mouth]).mean() > 0.5
    assert np.array_equal(frames[0], frames[1])  # both windows are silence
    # The upper half of the box is kept (the blend only covers the lower face).
    top = slice(y0 + 2, y0 + (y1 - y0) * 2 // 5)
    assert np.array_equal(frames[12][top, x0:x1], idle[top, x0:x1])

    # A later request for a tail of the chunk reproduces the same frames.
    again = source.render(20, 5)
    for a, b in zip(again, frames[20:]):
        assert np.abs(a.astype(int) - b).max() <= 1
    with pytest.raises(IndexError):
        source.render(24, 2)


def test_renderer_refuses_bad_geometry(checkpoint: Path, avatar: np.ndarray) -> None:
    with pytest.raises(ValueError, match="inside"):
        Wav2LipRenderer(avatar, (150, 60, 260, 180), checkpoint, device="cpu")
    with pytest.raises(ValueError, match="even"):
        Wav2LipRenderer(avatar[:-1], (50, 60, 150, 180), checkpoint, device="cpu")
