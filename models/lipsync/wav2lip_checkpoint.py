"""Load a user's Wav2Lip generator checkpoint into Wav2LipNet, refusing anything else clearly."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from models.lipsync.wav2lip_net import Wav2LipNet

_FIX = ("pass a public Wav2Lip generator checkpoint (the 96x96 model: wav2lip.pth or "
        "wav2lip_gan.pth from Rudrabha/Wav2Lip)")
_DP_PREFIX = "module."
# Batch-norm step counters are training bookkeeping; checkpoints saved without them load fine.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class CheckpointError(ValueError):
    """The file is not a loadable Wav2Lip generator checkpoint; the message says why and what to do."""


def load_wav2lip_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Wav2LipNet:
    """Read `path` ({"state_dict": ...} or a bare state dict, `module.` prefixes allowed) into an eval-mode net."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Wav2Lip checkpoint {path} does not exist or is not a file; {_FIX}")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path} is not a readable torch checkpoint (neither a torch zip archive nor a pickle); {_FIX}")
    try:
        # weights_only: a checkpoint is user-supplied, and a full unpickle would run its code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and plain containers, which are not loaded for "
            f"safety ({_unpickler_reason(exc)}); re-save just the generator weights with "
            f"torch.save(model.state_dict(), path) where you trust the file, or {_FIX}") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({exc}); {_FIX}") from exc

    state = _extract_state_dict(loaded, path)
    net = Wav2LipNet()
    expected = net.state_dict()
    _check_layout(state, expected, path)
    for key, value in expected.items():
        if key.endswith(_OPTIONAL_SUFFIX) and key not in state:
            state[key] = value
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; files from before torch 1.6 are a bare pickle (protocol 2+)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _unpickler_reason(exc: Exception) -> str:
    """The one informative line of torch's long weights-only refusal."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}"
    return lines[0] if lines else type(exc).__name__


def _extract_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The generator weights with `module.` (nn.DataParallel) prefixes removed."""
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        kind = type(loaded).__name__
        raise CheckpointError(f"{path} holds a {kind}, not a state dict or {{'state_dict': ...}}; {_FIX}")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            top = ", ".join(sorted(str(k) for k in loaded)[:8])
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor, so this is not a "
                f"state dict (top-level keys: {top}); {_FIX}")
        name = str(key)
        state[name[len(_DP_PREFIX):] if name.startswith(_DP_PREFIX) else name] = value
    return state


def _check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError naming the first key that is missing, unexpected or of the wrong shape."""
    problems: list[str] = []
    for key, want in expected.items():
        if key not in state:
            if not key.endswith(_OPTIONAL_SUFFIX):
                problems.append(f"missing key {key!r} (expected shape {tuple(want.shape)})")
        elif tuple(state[key].shape) != tuple(want.shape):
            problems.append(f"shape mismatch for {key!r}: checkpoint has {tuple(state[key].shape)}, "
                            f"Wav2Lip expects {tuple(want.shape)}")
    problems += [f"unexpected key {key!r} (shape {tuple(value.shape)})"
                 for key, value in state.items() if key not in expected]
    if not problems:
        return
    more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
    raise CheckpointError(f"{path} does not match the Wav2Lip generator: {problems[0]}{more}"
                          f"{_variant_hint(state)}; {_FIX}")


def _variant_hint(state: Mapping[str, torch.Tensor]) -> str:
    """Name the usual look-alikes, so the user knows which file they picked."""
    if "face_encoder_blocks.7.0.conv_block.0.weight" in state:
        return " - this looks like the 256x256 LiveTalking 'wav2lip256' variant, which is not supported"
    if not any(k.startswith("face_decoder_blocks.") for k in state):
        return " - it has no face decoder, so it is not a generator (a SyncNet expert or the quality discriminator?)"
    return ""
