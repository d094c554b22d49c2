"""A job's IP-Adapter units (sd-webui-controlnet's `ip-adapter_*` preprocessors): the reference image encoded by a
CLIP vision model, the adapters' attention processors installed on the UNet for the job only (the UNet's own
processors and image projection restored afterwards, so the cached model is as before), and each pipeline call of
the job given the image embeddings, with every unit's weight applied only between its start and end steps."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from backend.controlnet.ip_adapter_files import IPAdapterWeights
from backend.core.control_modes import HiresOption
from backend.core.controlnet_units import ControlNetUnit
from backend.core.errors import UserError


class IPAdapterMismatch(UserError):
    """An IP-Adapter made for another model than the checkpoint in use."""


@dataclass
class PreparedAdapter:
    index: int
    unit: ControlNetUnit
    weights: IPAdapterWeights
    embeds: torch.Tensor  # (1, 1, ...): the reference image's features for the adapter's projection
    negative: torch.Tensor  # the same for the unconditional half (a blank image, as diffusers and the extension do)
    infotext: str

    def applies(self, second_pass: bool) -> bool:
        wanted = HiresOption.HIGH_RES_ONLY if second_pass else HiresOption.LOW_RES_ONLY
        return self.unit.hr_option in (HiresOption.BOTH, wanted)

    def scale_at(self, step: int, total: int, second_pass: bool) -> float:
        """The unit's weight at `step` of `total` (diffusers' ControlNet rule for start/end), else 0."""
        if not self.applies(second_pass):
            return 0.0
        outside = step / total < self.unit.guidance_start or (step + 1) / total > self.unit.guidance_end
        return 0.0 if outside else float(self.unit.weight)

    def for_batch(self, batch: int, guided: bool) -> torch.Tensor:
        """The pipeline's `ip_adapter_image_embeds` entry for `batch` prompts: negatives first when guided."""
        positive = torch.cat([self.embeds] * batch)
        return torch.cat([torch.cat([self.negative] * batch), positive]) if guided else positive


def encode_reference(encoder, image: np.ndarray, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, unconditional features) as IP-Adapter reads them: the projected image embedding (blank: zeros),
    or for the plus adapters the penultimate hidden states (blank: those of an all-zero input)."""
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=Image.fromarray(image), return_tensors="pt").pixel_values
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    with torch.no_grad():
        if plus:
            features = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            blank = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            features = encoder(pixels).image_embeds
            blank = torch.zeros_like(features)
    return features[None], blank[None]


def check_fits(adapter: IPAdapterWeights, title: str, unet, checkpoint: str, checkpoint_family: str, field: str):
    """The adapter's key/value projections must match the UNet's cross-attention layers (count and text width)."""
    from backend.core.model_family import FAMILY_LABELS

    width = unet.config.cross_attention_dim
    cross_layers = sum(1 for name in unet.attn_processors if name.endswith("attn2.processor"))
    adapter_layers = sum(1 for key in adapter.state["ip_adapter"] if key.endswith(".to_k_ip.weight"))
    if adapter.cross_attention_dim != width or adapter_layers != cross_layers:
        made_for = FAMILY_LABELS.get(adapter.family or "", "another model")
        family = FAMILY_LABELS.get(checkpoint_family, checkpoint_family)
        raise IPAdapterMismatch(field, f"IP-Adapter '{title}' is made for {made_for} ({adapter_layers} attention "
                                       f"layers of text width {adapter.cross_attention_dim}) but the checkpoint "
                                       f"'{checkpoint}' is {family} ({cross_layers} layers of width {width}); pick "
                                       f"an IP-Adapter for {family}")


def ip_processors(unet) -> list:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    return [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor |
                                                                   IPAdapterAttnProcessor2_0)]


@contextmanager
def installed(unet, adapters: list[PreparedAdapter]):
    """The adapters' processors and image projection on `unet` for the block; the UNet's own put back after."""
    if not adapters:
        yield []
        return
    processors = dict(unet.attn_processors)
    projection, hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    try:
        unet._load_ip_adapter_weights([adapter.weights.state for adapter in adapters], low_cpu_mem_usage=False)
        yield ip_processors(unet)
    finally:
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = hid_type  # diffusers sets it the same way (FrozenDict attribute)


class AdaptedPipeline:
    """A job pipeline whose calls carry the adapters' image embeddings and set their per-step weights."""

    def __init__(self, pipeline, adapters: list[PreparedAdapter], processors: list, second_pass: bool):
        self._pipeline = pipeline
        self._adapters = adapters
        self._processors = processors
        self._second_pass = second_pass

    def __call__(self, *args, **kwargs):
        prompt_embeds = kwargs.get("prompt_embeds")
        batch = prompt_embeds.shape[0] if prompt_embeds is not None else 1
        guided = kwargs.get("guidance_scale", 7.5) > 1
        embeds = [adapter.for_batch(batch, guided) for adapter in self._adapters]
        pipeline, steps = self._pipeline, [0]

        def set_scales(_module, _args):
            total = getattr(pipeline, "_num_timesteps", None) or 1
            scales = [adapter.scale_at(steps[0], total, self._second_pass) for adapter in self._adapters]
            for processor in self._processors:
                processor.scale = scales
            steps[0] += 1

        unet = pipeline.unet
        handle = unet.register_forward_pre_hook(set_scales)  # one UNet call per step (the guidance is batched)
        try:
            return pipeline(*args, **kwargs, ip_adapter_image_embeds=embeds)
        finally:
            handle.remove()

    def __getattr__(self, name):
        return getattr(self._pipeline, name)
