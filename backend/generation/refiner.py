"""A1111's refiner (1.6+): the job's checkpoint samples the first part of the steps, then a second checkpoint
continues the same sampling run from the same latents (same sampler state, same noise schedule) with its own
UNet and its own encoding of the prompts, as A1111 swaps the model inside its sampler.

The swap happens in the pipeline's step callback, on the job's own pipeline object (never the cached one), and
is undone when the call ends. Any checkpoint whose latent space matches may refine (SD1 <-> SD2, SDXL <-> SDXL);
the VAE that decodes is the refiner's unless the job chose one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from backend.core.requests import RequestError
from backend.models.loader import LoadedModel
from backend.models.registry import CheckpointEntry

LATENT_SPACES = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "sdxl-refiner": "sdxl"}


def check_compatible(base: LoadedModel, other: LoadedModel, other_title: str, field: str = "refiner_checkpoint"):
    """A refiner (or hires checkpoint) must share the base's latent space (A1111 allows any such pair)."""
    if LATENT_SPACES[base.family] != LATENT_SPACES[other.family]:
        raise RequestError(field, f"{other_title} is an {other.label} model; it cannot continue the latents of an "
                                  f"{base.label} model")
    if other.inpainting or base.inpainting:
        raise RequestError(field, "inpainting checkpoints cannot be combined with a second checkpoint")
    if field == "refiner_checkpoint" and base.family == "sdxl-refiner":
        raise RequestError(field, "the job's checkpoint is itself an SDXL refiner; choose an SDXL base checkpoint "
                                  "for the job")


@dataclass(frozen=True)
class LeasedModel:
    """Another checkpoint a job uses, leased for the whole job, with its own prompt context (JobNetworks)."""
    entry: CheckpointEntry
    model: LoadedModel
    prompts: object


@dataclass
class Refiner:
    entry: CheckpointEntry
    model: LoadedModel
    prompts: object  # the refiner's JobNetworks: its own encoder for the job's prompts
    switch_at: float
    keep_vae: bool  # the job chose a VAE: it decodes, whichever model finishes

    @property
    def leased(self) -> LeasedModel:
        """The refiner as the model of a whole pass (the hires pass after it took over the first)."""
        return LeasedModel(entry=self.entry, model=self.model, prompts=self.prompts)

    @property
    def infotext(self) -> dict:
        return {"Refiner": f"{self.entry.model_name} [{self.entry.short_hash}]",
                "Refiner switch at": self.switch_at}

    def base_steps(self, steps: int) -> int:
        """How many of a pass's steps the base model samples (A1111: int(steps * switch_at))."""
        return int(steps * self.switch_at)

    @contextmanager
    def applied(self, pipeline, arguments: dict, steps: int, batch: int, conditioning=None,
                on_switch: Callable[[], None] | None = None) -> Iterator[dict]:
        """`arguments` for `pipeline` with the step callback extended by the switch; the pipeline's own modules
        are put back when the block ends. `conditioning`: the refiner's encoding of the pass's prompts (default:
        the job's prompts for a pass of `steps`); `on_switch` is called when the refiner takes over."""
        base_unet, base_vae = pipeline.unet, pipeline.vae
        conditioning = conditioning or self.prompts.conditioning(steps)
        inner = arguments["callback_on_step_end"]
        time_ids = self.model.family == "sdxl-refiner"  # its UNet wants 5 time ids: sizes, crop, aesthetic score
        inputs = list(dict.fromkeys([*arguments["callback_on_step_end_tensor_inputs"], "prompt_embeds",
                                     *(["add_text_embeds"] if conditioning.sdxl else []),
                                     *(["add_time_ids"] if time_ids else [])]))

        def callback(pipe, step, timestep, tensors):
            tensors = inner(pipe, step, timestep, tensors)
            switch = self.base_steps(pipe.num_timesteps)
            if step + 1 >= switch and pipe.unet is base_unet and step + 1 < pipe.num_timesteps:
                pipe.unet = self.model.pipeline.unet
                if not self.keep_vae:
                    pipe.vae = self.model.pipeline.vae
                if on_switch is not None:
                    on_switch()
            if pipe.unet is not base_unet:  # the refiner's conditioning from here on (prompt editing included)
                tensors.update(conditioning._step_tensors(pipe, step + 1, batch, tensors["prompt_embeds"]))
                if time_ids:
                    tensors["add_time_ids"] = refiner_time_ids(pipe, tensors["latents"], tensors["add_time_ids"],
                                                               batch)
            return tensors

        try:
            yield arguments | {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": inputs}
        finally:
            pipeline.unet, pipeline.vae = base_unet, base_vae


@contextmanager
def no_refiner(pipeline, arguments: dict, steps: int, batch: int, conditioning=None,
               on_switch: Callable[[], None] | None = None) -> Iterator[dict]:
    yield arguments


def refined(refiner: Refiner | None):
    """The context that applies `refiner` to a pipeline call, or one that changes nothing."""
    return refiner.applied if refiner is not None else no_refiner


# The SDXL refiner's aesthetic-score conditioning, at diffusers' (and A1111's) defaults.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def refiner_time_ids(pipe, latents: torch.Tensor, current: torch.Tensor, batch: int) -> torch.Tensor:
    """The SDXL refiner's added time ids for images of the latents' size: (height, width, crop top, crop left,
    aesthetic score), the negative half first when the pipeline guides, as the base's were laid out."""
    height, width = (side * pipe.vae_scale_factor for side in latents.shape[-2:])
    positive = torch.tensor([[height, width, 0, 0, AESTHETIC_SCORE]]).repeat(batch, 1)
    negative = torch.tensor([[height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE]]).repeat(batch, 1)
    guided = getattr(pipe, "do_classifier_free_guidance", True)
    ids = torch.cat([negative, positive]) if guided else positive
    return ids.to(current.device, current.dtype)
