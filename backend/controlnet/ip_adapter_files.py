"""IP-Adapter files (the published single-file layout: `image_proj.*` and `ip_adapter.*` keys, flat in a
.safetensors or nested in a .bin) and the CLIP vision image encoders they need, from models/clip_vision (A1111's
and Forge's folder, transformers' CLIPVisionModelWithProjection keys). Everything is read from the weights' shapes;
nothing in a file runs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.controlnet.model_files import MODEL_SUFFIXES, ControlNetEntry
from backend.core.errors import UserError
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors

IP_ADAPTER_PREFIX = "ip-adapter"
# CLIP vision widths whose head count is known (weights cannot show it): ViT-L/14, ViT-H/14, ViT-bigG/14
KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
# the encoder each sd-webui-controlnet preprocessor asks for, by the encoder's hidden width (None: whichever fits)
PREPROCESSOR_ENCODERS = {"ip-adapter-auto": None, "ip-adapter_clip_h": 1280, "ip-adapter_clip_sd15": 1280,
                         "ip-adapter_clip_sdxl_plus_vith": 1280, "ip-adapter_clip_g": 1664,
                         "ip-adapter_clip_sdxl": 1664}
FAMILY_BY_CROSS_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


class MissingImageEncoder(UserError):
    """No CLIP vision model in models/clip_vision fits the IP-Adapter."""


def is_ip_adapter_module(module: str | None) -> bool:
    return (module or "").lower().startswith(IP_ADAPTER_PREFIX)


def is_ip_adapter_name(name: str) -> bool:
    """sd-webui-controlnet tells IP-Adapter files by their names (ip-adapter_sd15, ip-adapter-plus_sdxl_vit-h...)."""
    return name.lower().replace("_", "-").startswith(IP_ADAPTER_PREFIX)


@dataclass(frozen=True)
class IPAdapterWeights:
    state: dict  # {"image_proj": {...}, "ip_adapter": {...}}: what diffusers' _load_ip_adapter_weights takes
    plus: bool  # a Resampler projection (reads the encoder's penultimate hidden states, not its image embeds)
    input_width: int  # the encoder output width the projection reads
    cross_attention_dim: int  # the UNet text width the adapter was trained for

    @property
    def family(self) -> str | None:
        return FAMILY_BY_CROSS_WIDTH.get(self.cross_attention_dim)


def _flat(raw, path: Path) -> dict[str, torch.Tensor]:
    """The .bin layout nests {"image_proj": {...}, "ip_adapter": {...}}; .safetensors has dotted keys."""
    if isinstance(raw, dict) and isinstance(raw.get("image_proj"), dict):
        raw = {f"{part}.{key}": value for part in ("image_proj", "ip_adapter")
               for key, value in raw.get(part, {}).items()}
    require_flat_tensors(raw, path)
    return raw


def read_ip_adapter(entry: ControlNetEntry, field: str = "model") -> IPAdapterWeights:
    path = entry.weights_file()
    state = _flat(read_weights(path), path)
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in parts:
            parts[part][rest] = value
    projection, attention = parts["image_proj"], parts["ip_adapter"]
    to_k = [value for key, value in attention.items() if key.endswith(".to_k_ip.weight")]
    if not to_k or not ("proj.weight" in projection or "proj_in.weight" in projection):
        raise CheckpointError(f"{path.name} is not an IP-Adapter in the published layout (image_proj.* and "
                              "ip_adapter.* keys); FaceID, full-face and other variants are not supported yet", field)
    plus = "latents" in projection
    input_width = projection["proj_in.weight" if plus else "proj.weight"].shape[1]
    return IPAdapterWeights(parts, plus, int(input_width), int(to_k[0].shape[1]))


@dataclass(frozen=True)
class ClipVisionFile:
    path: Path
    config: dict  # CLIPVisionConfig values read from the shapes


def _layers(state, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def clip_vision_config(state: dict[str, torch.Tensor]) -> dict:
    """transformers' CLIPVisionConfig of a CLIPVisionModelWithProjection state dict, from its shapes."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    hidden = patch.shape[0]
    grid = round((positions - 1) ** 0.5)
    heads = KNOWN_HEADS.get(hidden) or next(h for h in (16, 12, 8, 4, 2, 1) if hidden % h == 0)
    return {"hidden_size": hidden, "patch_size": patch.shape[2], "num_channels": patch.shape[1],
            "image_size": grid * patch.shape[2], "projection_dim": state["visual_projection.weight"].shape[0],
            "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": _layers(state, r"vision_model\.encoder\.layers\.(\d+)\."),
            "num_attention_heads": heads, "hidden_act": "quick_gelu" if hidden == 1024 else "gelu"}


def read_clip_vision(path: Path) -> ClipVisionFile:
    state = _flat(read_weights(path), path)
    try:
        return ClipVisionFile(path, clip_vision_config(state))
    except (KeyError, StopIteration) as error:
        raise CheckpointError(f"{path.name} is not a CLIP vision model in transformers' layout ({error})") from error


def find_image_encoder(folder: Path, adapter: IPAdapterWeights, module: str, field: str) -> ClipVisionFile:
    """The CLIP vision model in `folder` whose output the adapter reads; the preprocessor's choice of ViT-H or
    ViT-bigG decides between several that fit."""
    fitting = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES) \
        if folder.is_dir() else []
    for path in files:
        try:
            encoder = read_clip_vision(path)
        except CheckpointError:
            continue
        width = encoder.config["hidden_size"] if adapter.plus else encoder.config["projection_dim"]
        if width == adapter.input_width:
            fitting.append(encoder)
    wanted = PREPROCESSOR_ENCODERS.get(module.lower())
    preferred = [encoder for encoder in fitting if encoder.config["hidden_size"] == wanted]
    if preferred or fitting:
        return (preferred or fitting)[0]
    kind = "hidden states" if adapter.plus else "image embeddings"
    raise MissingImageEncoder(field, f"no image encoder for this IP-Adapter: put a CLIP vision model whose {kind} "
                                     f"are {adapter.input_width} wide (ViT-H for most, ViT-bigG for ip-adapter_sdxl) "
                                     f"in {folder}")


def build_image_encoder(encoder: ClipVisionFile, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from backend.models.loader import materialise

    state = _flat(read_weights(encoder.path), encoder.path)
    with init_empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**encoder.config))
    # position_ids: a non-persistent buffer that some files still carry (and the model builds itself)
    state = {key: value for key, value in state.items() if not key.endswith("position_ids")}
    return materialise(model, state, dtype, f"image encoder {encoder.path.name}")
