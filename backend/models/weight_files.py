"""Read weight files safely. The format is decided by the file's first bytes, never by its name.

- safetensors: 8-byte little-endian header length, then a JSON header.
- PyTorch zip (torch.save since 1.6) or legacy pickle: only through torch.load(weights_only=True),
  which refuses any object that is not plain tensors and containers, so no foreign code runs.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import torch

from backend.core.errors import UserError

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(UserError):
    """A weight file that cannot or must not be loaded (or a model name that names none); the message is meant for
    the user."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(field, message)


def sniff_format(path: Path) -> str:
    """Return "safetensors", "torch-zip", "torch-pickle" or "gguf"; raise CheckpointError for anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise CheckpointError(f"Cannot read {path.name}: {error.strerror}") from error
    if len(head) < 9:
        raise CheckpointError(f"{path.name} is empty or truncated ({size} bytes)")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[0] == 0x80 and head[1] <= 5:  # pickle PROTO opcode with a known protocol number
        return "torch-pickle"
    header_length = struct.unpack("<Q", head[:8])[0]
    if head[8:9] == b"{":
        if header_length > min(SAFETENSORS_MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path.name}: safetensors header says {header_length} bytes but the file has {size}; "
                "the file is truncated or corrupt")
        return "safetensors"
    raise CheckpointError(
        f"{path.name} is neither a safetensors file nor a PyTorch weights file; refusing to load it")


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_length))
    return header.get("__metadata__") or {}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a weight file on the CPU, validating as it goes."""
    state = read_weights(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    require_flat_tensors(state, path)
    return state


def require_flat_tensors(state, path: Path):
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} does not hold a flat dictionary of tensors")


def read_weights(path: Path):
    """The raw content of a weight file on the CPU: tensors, possibly in nested dictionaries (upscaler files
    wrap theirs in "params_ema" and the like). Never runs code from the file."""
    kind = sniff_format(path)
    if kind == "gguf":
        from backend.models.gguf_weights import read_gguf

        return read_gguf(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path.name} is not a valid safetensors file: {error}") from error
    elif path.suffix.lower() == ".safetensors":
        # Users trust a .safetensors name to mean "no code inside"; a pickle under that name is not loaded, even a
        # harmless one, so the name keeps its promise (the content decides the format, the name can only refuse).
        raise CheckpointError(f"{path.name} is named .safetensors but is a PyTorch pickle; not loaded. If you "
                              "trust its source, rename it to .ckpt (read as weights only, never running code)")
    else:
        name = path.name
        try:
            # A file object, not a path: torch.load would pick a reader from the file name's extension.
            with open(path, "rb") as handle:
                state = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{name} contains Python objects other than plain weights{_refused_globals(error)}; refusing to run "
                "its code (the file was not loaded and nothing in it ran). Use a .safetensors version of this model "
                "(most publishers offer one)") from error
        except (RuntimeError, EOFError, ValueError, OSError) as error:
            raise CheckpointError(f"{name} is truncated or corrupt: {_torch_detail(error)}") from error
    return state


# torch's refusal names what the pickle wanted to run, but also tells the reader how to run it anyway
# (`weights_only=False`, `add_safe_globals`): for a file from an unknown source that advice is the attack, so only
# the facts are passed on.
_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")
_ADVICE = re.compile(r"weights_only|safe_globals|trusted source|trust the source|can still be loaded", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refused_globals(error: BaseException) -> str:
    names = list(dict.fromkeys(_GLOBAL_NAME.findall(str(error))))
    return f" (it asks to run {', '.join(names[:3])})" if names else ""


def _torch_detail(error: BaseException) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines()]
    kept = [line for line in lines if line and not _ADVICE.search(line)]
    return (kept[0] if kept else type(error).__name__)[:300]


def declared_resolution(path: Path) -> tuple[int, int] | None:
    """The training size a safetensors file declares in its ModelSpec metadata ("modelspec.resolution":
    "1024x1024"), read from the header only."""
    try:
        if sniff_format(path) != "safetensors":
            return None
        text = read_safetensors_metadata(path).get("modelspec.resolution", "")
        width, height = (int(part) for part in text.lower().split("x"))
        return width, height
    except (CheckpointError, ValueError, OSError):
        return None
