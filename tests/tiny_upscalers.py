"""Tiny upscaler model files with seeded random weights, in the key layouts real files are published in.

- ESRGAN (RRDBNet), the original "old" layout of ESRGAN_4x.pth / 4x-UltraSharp.pth: model.0 ... model.10
- Real-ESRGAN's RRDBNet (RealESRGAN_x4plus.pth): conv_first, body.N.rdbM.convK, conv_up1 ... inside "params_ema"
- Real-ESRGAN Compact / SRVGGNetCompact (realesr-general-x4v3.pth): body.N inside "params"
The networks come from spandrel's own architecture classes at a tiny width.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file


def esrgan_state(scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Old-layout RRDBNet weights. The last layer is boosted so outputs spread around mid-grey instead of
    sitting near black (random weights), which makes pixel comparisons meaningful."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = ESRGAN(num_filters=8, num_blocks=1, scale=scale).state_dict()
    last = max(int(key.split(".")[1]) for key in state if key.startswith("model."))
    state[f"model.{last}.weight"] = state[f"model.{last}.weight"] * 5
    state[f"model.{last}.bias"] = state[f"model.{last}.bias"] + 0.5
    return state


def to_real_esrgan_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old-layout 4x RRDBNet -> Real-ESRGAN's (basicsr) key names."""
    blocks = max(int(key.split(".")[3]) for key in state if key.startswith("model.1.sub."))
    names = {"model.0": "conv_first", f"model.1.sub.{blocks}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    renamed = {}
    for key, value in state.items():
        match = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key)
        if match:
            block, rdb, conv, kind = match.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        else:
            layer, kind = key.rsplit(".", 1)
            renamed[f"{names[layer]}.{kind}"] = value
    return renamed


def compact_state(scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.Compact import Compact

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Compact(num_feat=8, num_conv=2, upscale=scale).state_dict()


def save(path: Path, state: dict, wrapper: str | None = None) -> Path:
    """.safetensors (flat, as converted files are) or .pth via torch.save, optionally wrapped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save({wrapper: state} if wrapper else state, path)
    return path


def write_upscaler_folder(models_dir: Path) -> dict[str, Path]:
    """Two architectures, scales 2 and 4, both file formats, in ESRGAN/ and RealESRGAN/."""
    return {
        "esrgan-2x": save(models_dir / "ESRGAN" / "tiny-esrgan-2x.pth", esrgan_state(2, seed=1)),
        "esrgan-4x": save(models_dir / "ESRGAN" / "tiny-esrgan-4x.safetensors", esrgan_state(4, seed=2)),
        "realesrgan-4x": save(models_dir / "RealESRGAN" / "tiny-realesrgan-x4plus.pth",
                              to_real_esrgan_layout(esrgan_state(4, seed=2)), wrapper="params_ema"),
        "compact-2x": save(models_dir / "RealESRGAN" / "tiny-compact-x2.pth", compact_state(2, seed=3),
                           wrapper="params"),
        "compact-4x": save(models_dir / "RealESRGAN" / "tiny-compact-x4.safetensors", compact_state(4, seed=4)),
    }
