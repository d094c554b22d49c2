"""ControlNet model files in models/ControlNet: listed as sd-webui-controlnet lists them ("name [hash]", the hash
being A1111's short legacy model hash), read safely (a .pth only as weights, through the same reader as
checkpoints), their family told from the weights, and converted to a diffusers ControlNetModel.

Layouts read: lllyasviel's original single files (v1.0 "control_model.*" keys, v1.1 bare keys; .pth or
.safetensors), diffusers single files (ControlNetModel keys) and diffusers folders (config.json beside the weights).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.core.errors import UserError
from backend.core.model_family import FAMILY_LABELS
from backend.models.weight_files import CheckpointError, load_state_dict

MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ORIGINAL_PREFIX = "control_model."


def legacy_model_hash(path: Path) -> str:
    """A1111's old short model hash (sha256 of 64 KiB at 1 MiB, 8 hex digits): what the extension shows in
    "name [hash]" and writes into infotexts."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        digest.update(handle.read(0x10000))
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class ControlNetEntry:
    name: str  # the file's stem (or the folder's name), as the extension lists it
    path: Path  # the weights file, or the diffusers folder
    short_hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    def weights_file(self) -> Path:
        if self.path.is_dir():
            return next(self.path / name for name in DIFFUSERS_WEIGHT_NAMES if (self.path / name).is_file())
        return self.path

    def matches(self, query: str) -> bool:
        """The title, or the name alone (the extension matches "name" without its hash, case-insensitively, so
        that a hash that differs from another installation's still finds the model)."""
        bare = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", query).strip()
        return query == self.title or bare.lower() == self.name.lower()


def _diffusers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in DIFFUSERS_WEIGHT_NAMES)


def _scan(root: Path) -> list[ControlNetEntry]:
    found = []
    if root.is_dir():
        folders = sorted(config.parent for config in root.rglob("config.json") if _diffusers_folder(config.parent))
        for folder in folders:
            weights = next(folder / name for name in DIFFUSERS_WEIGHT_NAMES if (folder / name).is_file())
            found.append(ControlNetEntry(folder.name, folder, legacy_model_hash(weights)))
        for path in sorted(root.rglob("*"), key=lambda p: str(p).lower()):
            if (path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and not path.name.startswith(".")
                    and not any(folder in path.parents for folder in folders) and path.stem != "None"):
                found.append(ControlNetEntry(path.stem, path, legacy_model_hash(path)))
    return found


class ControlNetFolder:
    """The ControlNet models under one folder (sub-folders included, as users sort them), then the built-in one
    when `builtin` (asked on each scan) gives it: a user's file of the same name is found first."""

    def __init__(self, folder: Path, extra_folders: tuple[Path, ...] = (),
                 builtin: Callable[[], ControlNetEntry | None] | None = None):
        self.folder = Path(folder)
        self.extra_folders = tuple(Path(extra) for extra in extra_folders)  # models/ipadapter
        self.builtin = builtin
        self._lock = threading.Lock()
        self._entries: tuple[ControlNetEntry, ...] | None = None

    def refresh(self) -> tuple[ControlNetEntry, ...]:
        found = [entry for folder in (self.folder, *self.extra_folders) for entry in _scan(folder)]
        builtin = self.builtin() if self.builtin else None
        if builtin is not None:
            found.append(builtin)
        with self._lock:
            self._entries = tuple(found)
        return self._entries

    @property
    def entries(self) -> tuple[ControlNetEntry, ...]:
        with self._lock:
            entries = self._entries
        return entries if entries is not None else self.refresh()

    def titles(self) -> list[str]:
        return [entry.title for entry in self.entries]

    def find(self, query: str, field: str = "model") -> ControlNetEntry:
        for entries in (self.entries, self.refresh()):  # a file added since the last listing is found too
            for entry in entries:
                if entry.matches(query):
                    return entry
        known = ", ".join(self.titles()) or f"none: put ControlNet models in {self.folder}"
        raise UserError(field, f"unknown ControlNet model '{query}'; installed: {known}")


@dataclass(frozen=True)
class ControlNetWeights:
    """A ControlNet's weights with diffusers' key names, and what the weights tell about it."""

    state: dict[str, torch.Tensor]
    family: str  # "sd1", "sd2" or "sdxl"
    config: dict  # the ControlNetModel config values the weights decide

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS[self.family]


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := regex.match(key))})


def to_diffusers_keys(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """lllyasviel's layout converted with diffusers' own converter; diffusers keys kept as they are."""
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state
    bare = {key.removeprefix(ORIGINAL_PREFIX): value for key, value in state.items()}
    if "input_hint_block.0.weight" not in bare or "zero_convs.0.0.weight" not in bare:
        raise CheckpointError(f"{name} is not a ControlNet in a layout this server reads (lllyasviel's "
                              "control_model.* / input_hint_block keys or diffusers' ControlNetModel); Control-LoRAs "
                              "and ControlNet-LLLite files are not supported yet")
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    per_level = [index for index in _indices(bare, r"input_blocks\.(\d+)\.0\.op\.weight")]
    layers_per_block = per_level[0] - 1 if per_level else len(_indices(bare, r"input_blocks\.(\d+)\.")) - 1
    converted = convert_controlnet_checkpoint(bare, {"layers_per_block": layers_per_block})
    # diffusers' converter leaves SDXL's size/crop embedding behind; its names are the UNet's
    for index, linear in ((0, "linear_1"), (2, "linear_2")):
        for kind in ("weight", "bias"):
            if f"label_emb.0.{index}.{kind}" in bare:
                converted[f"add_embedding.{linear}.{kind}"] = bare[f"label_emb.0.{index}.{kind}"]
    converted = {key: value for key, value in converted.items() if not key.startswith("controlnet_cond_embedding.")}
    converted.update(hint_block_keys(bare))
    return {key: value for key, value in converted.items() if value is not None}


def hint_block_keys(bare: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hint encoder's convolutions under diffusers' names, for any depth: lllyasviel's input_hint_block is
    convolutions at even indices (SiLUs between), the first conv_in and the last conv_out. diffusers' converter
    assumes SD's depth (three stride-2 steps); a ControlNet for a model with a 4x autoencoder has two."""
    convs = _indices(bare, r"input_hint_block\.(\d+)\.weight")
    names = {convs[0]: "conv_in", convs[-1]: "conv_out"}
    names.update({index: f"blocks.{number}" for number, index in enumerate(convs[1:-1])})
    return {f"controlnet_cond_embedding.{names[index]}.{kind}": bare[f"input_hint_block.{index}.{kind}"]
            for index in convs for kind in ("weight", "bias") if f"input_hint_block.{index}.{kind}" in bare}


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """The ControlNetModel config values visible in the weights (widths, depths, attention layout, hint input)."""
    levels = _indices(state, r"down_blocks\.(\d+)\.")
    channels = [state[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0] for level in levels]
    has_attention = [f"down_blocks.{level}.attentions.0.proj_in.weight" in state for level in levels]
    depths = [len(_indices(state, rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
              for level in levels]
    attn2 = next(value for key, value in state.items() if key.endswith("attn2.to_k.weight"))
    proj_in = next(value for key, value in state.items() if key.endswith("proj_in.weight"))
    hint_blocks = _indices(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    hint_channels = [state["controlnet_cond_embedding.conv_in.weight"].shape[0],
                     *(state[f"controlnet_cond_embedding.blocks.{index}.weight"].shape[0]
                       for index in hint_blocks if index % 2 == 1)]
    config = {
        "in_channels": state["conv_in.weight"].shape[1],
        "conditioning_channels": state["controlnet_cond_embedding.conv_in.weight"].shape[1],
        "block_out_channels": channels,
        "layers_per_block": len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\.")),
        "down_block_types": ["CrossAttnDownBlock2D" if attention else "DownBlock2D" for attention in has_attention],
        "cross_attention_dim": attn2.shape[1],
        "use_linear_projection": proj_in.ndim == 2,
        "transformer_layers_per_block": depths,
        "conditioning_embedding_out_channels": hint_channels,
    }
    if "add_embedding.linear_1.weight" in state:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = state["add_embedding.linear_1.weight"].shape[1]
    return config


def family_of(state: dict[str, torch.Tensor]) -> str:
    """SDXL ControlNets carry the size/crop embedding; SD2's attention uses linear projections, SD1's 1x1 convs."""
    if "add_embedding.linear_1.weight" in state:
        return "sdxl"
    proj_in = next((value for key, value in state.items() if key.endswith("proj_in.weight")), None)
    return "sd2" if proj_in is not None and proj_in.ndim == 2 else "sd1"


def read_state(entry: ControlNetEntry) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The file's tensors, read without running anything in it (.pth/.ckpt/.bin: torch.load(weights_only=True)
    only), and a diffusers folder's declared config (None for a single file)."""
    state = load_state_dict(entry.weights_file())
    declared = json.loads((entry.path / "config.json").read_text()) if entry.path.is_dir() else None
    return state, declared


def read_controlnet(entry: ControlNetEntry, read: tuple[dict, dict | None] | None = None) -> ControlNetWeights:
    """The weights of `entry` (`read`: what read_state gave, when the caller has it already)."""
    weights = entry.weights_file()
    state, declared = read or read_state(entry)
    state = to_diffusers_keys(state, weights.name)
    if declared is not None and declared.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise CheckpointError(f"{entry.name} is a {declared.get('_class_name')}, not a ControlNetModel; "
                              "only ControlNets and T2I-Adapters are supported yet")
    try:
        return ControlNetWeights(state, family_of(state), infer_config(state))
    except (KeyError, StopIteration) as error:
        raise CheckpointError(f"{weights.name} is missing weights a ControlNet has ({error})") from error
