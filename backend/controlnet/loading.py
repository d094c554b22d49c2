"""A ControlNetModel for the checkpoint in use, built from a ControlNet file, and a small cache of the built ones.

The weights decide the widths and layout; what weights cannot show (attention head counts, the size/crop
embedding width of SDXL) comes from the checkpoint's UNet, which the ControlNet must match anyway."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from backend.controlnet.model_files import (
    ControlNetEntry,
    ControlNetFolder,
    ControlNetWeights,
    read_controlnet,
    read_state,
)
from backend.controlnet.t2i_adapter_files import build_adapter, is_t2i_adapter
from backend.core.errors import UserError
from backend.core.model_family import FAMILY_LABELS
from backend.models.loader import materialise
from backend.models.module_store import ModuleStore

# UNet config values a ControlNet shares with its base model and cannot be read from its weights
FROM_UNET = ("attention_head_dim", "num_attention_heads", "addition_time_embed_dim", "upcast_attention",
             "flip_sin_to_cos", "freq_shift", "norm_num_groups", "norm_eps", "act_fn", "resnet_time_scale_shift",
             "class_embed_type", "addition_embed_type_num_heads", "only_cross_attention", "downsample_padding",
             "mid_block_scale_factor")


class ControlNetFamilyMismatch(UserError):
    """A ControlNet made for another model family than the checkpoint in use."""


def controlnet_config(weights: ControlNetWeights, unet_config: dict, global_pooling: bool) -> dict:
    config = {key: unet_config[key] for key in FROM_UNET if key in unet_config}
    config.update(weights.config, global_pool_conditions=global_pooling)
    heads = config.get("attention_head_dim")
    if isinstance(heads, list | tuple) and len(heads) != len(config["block_out_channels"]):
        config["attention_head_dim"] = heads[0]
    return config


def check_family(entry: ControlNetEntry, weights: ControlNetWeights, checkpoint_family: str, checkpoint: str,
                 field: str):
    if weights.family != checkpoint_family:
        raise ControlNetFamilyMismatch(field, f"ControlNet '{entry.title}' is a {weights.family_label} ControlNet but "
                                              f"the checkpoint '{checkpoint}' is "
                                              f"{FAMILY_LABELS.get(checkpoint_family, checkpoint_family)}; pick a "
                                              f"{FAMILY_LABELS.get(checkpoint_family, checkpoint_family)} ControlNet")


def build_controlnet(entry: ControlNetEntry, unet_config: dict, checkpoint_family: str, checkpoint: str,
                     dtype: torch.dtype, field: str = "model"):
    """The ControlNetModel (or T2IAdapter) of `entry` on the CPU in `dtype`; a family other than the checkpoint's is
    a UserError naming both, a cross-attention width other than the UNet's too (a ControlNet of another model
    size)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    state, declared = read_state(entry)
    if is_t2i_adapter(state, declared):  # served by the same units (diffusers' T2IAdapter)
        return build_adapter(entry, state, declared, unet_config, checkpoint_family, checkpoint, dtype, field)
    weights = read_controlnet(entry, (state, declared))
    check_family(entry, weights, checkpoint_family, checkpoint, field)
    if weights.config["cross_attention_dim"] != unet_config.get("cross_attention_dim"):
        raise ControlNetFamilyMismatch(field, f"ControlNet '{entry.title}' expects text features of width "
                                              f"{weights.config['cross_attention_dim']} but the checkpoint "
                                              f"'{checkpoint}' gives {unet_config.get('cross_attention_dim')}")
    # sd-webui-controlnet's rule: the v1.1 shuffle model pools its control globally, known by its name
    config = controlnet_config(weights, unet_config, global_pooling="shuffle" in Path(entry.name).name.lower())
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    return materialise(model, weights.state, dtype, f"ControlNet {entry.name}")


class ControlNetCache:
    """Built ControlNets (and T2I-Adapters, image encoders) by (file, checkpoint UNet, dtype), kept in a ModuleStore:
    the model manager's (under its limits, app.py's wiring) or one of their own."""

    def __init__(self, folder: ControlNetFolder, max_models: int = 4, store: ModuleStore | None = None):
        self.folder = folder
        self.store = store if store is not None else ModuleStore(max_models)

    @contextmanager
    def lease(self, query: str, unet_config: dict, checkpoint_family: str, checkpoint: str, dtype: torch.dtype,
              field: str = "model"):
        entry = self.folder.find(query, field)
        key = ("controlnet", str(entry.path), entry.short_hash, checkpoint, str(dtype))
        with self.store.lease(key, f"ControlNet {entry.title}", lambda: build_controlnet(
                entry, unet_config, checkpoint_family, checkpoint, dtype, field)) as model:
            yield entry, model

    @contextmanager
    def lease_built(self, key: tuple, build, title: str = ""):
        """The model cached under `key`, built by `build()` when it is not (an IP-Adapter's image encoder, say),
        held for the block."""
        with self.store.lease(key, title or str(key[0]), build) as model:
            yield model

    def clear_unused(self):
        self.store.free_unused()

    def cached_count(self) -> int:
        return self.store.count()
