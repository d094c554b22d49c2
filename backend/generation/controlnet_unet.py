"""ControlNet units applied through the UNet, as sd-webui-controlnet does: a forward pre-hook on the job
pipeline's own view of the UNet runs the units that steer the current step and hands their residuals to the UNet.

Any SD/SDXL pipeline is steered the same way (txt2img, img2img and inpainting, on 4- and 9-channel UNets; the
ControlNet sees the 4 latent channels), with diffusers' ControlNet pipelines' maths: per-unit weight, start/end
as `1 - (i/N < start or (i+1)/N > end)`, global-pooling models (shuffle) on the conditional half only. A refiner
that swaps its own UNet in mid-run gets no control: the units steer the base model's steps only, as there.
"""
from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")


def unit_view(model: torch.nn.Module) -> torch.nn.Module:
    """The same module (its weights and submodules shared, nothing copied) with empty hook tables of its own, so a
    hook put on it never acts on the cached model nor on another job's or unit's view."""
    view = copy.copy(model)
    for table in HOOK_TABLES:
        setattr(view, table, OrderedDict())
    return view


@dataclass
class SteeringUnit:
    """A unit as the hook runs it: its ControlNet (or T2I-Adapter) and its control map (1, 3, H, W) for this pass."""
    model: torch.nn.Module
    control: torch.Tensor
    weight: float
    start: float
    end: float

    @property
    def is_adapter(self) -> bool:
        return hasattr(self.model, "total_downscale_factor")  # diffusers' T2IAdapter

    def steers(self, step: int, total: int) -> bool:
        return not (step / total < self.start or (step + 1) / total > self.end)


@dataclass
class StepClock:
    """The step of the pipeline call being sampled (diffusers' `i`), advanced by the step callback."""
    step: int = 0
    _cache: dict = field(default_factory=dict)  # control maps at the sample's size and batch, per unit

    def reset(self):
        self.step = 0


def control_batch(control: torch.Tensor, size: tuple[int, int], batch: int, like: torch.Tensor) -> torch.Tensor:
    """The map at `size` (pixels) repeated for the batch, as diffusers' prepare_control_image (nearest resize)."""
    if tuple(control.shape[-2:]) != size:
        control = F.interpolate(control, size=size)
    return control.to(like.device, like.dtype).repeat(batch, 1, 1, 1)


def residuals_hook(units: list[SteeringUnit], clock: StepClock, pipeline, scale_factor: int, images_per_batch: int):
    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        total = getattr(pipeline, "_num_timesteps", None) or 1
        steering = [unit for unit in units if unit.steers(clock.step, total)]
        if not steering:
            return args, kwargs
        guided = sample.shape[0] == 2 * images_per_batch
        context = kwargs["encoder_hidden_states"]
        added = kwargs.get("added_cond_kwargs")
        size = (sample.shape[-2] * scale_factor, sample.shape[-1] * scale_factor)
        down_sum = mid_sum = features = None
        for unit in steering:
            if unit.is_adapter:
                unit_features = adapter_features(unit, clock, size, sample)
                features = unit_features if features is None else [
                    total_ + feature for total_, feature in zip(features, unit_features, strict=True)]
                continue
            latents = sample[:, :unit.model.config.in_channels]  # an inpainting UNet's extra channels are its own
            pooled = bool(unit.model.config.get("global_pool_conditions", False)) and guided
            unit_context, unit_added = context, added
            if pooled:  # diffusers' guess mode: the conditional half only, zeros for the unconditional one
                latents, unit_context = latents.chunk(2)[1], context.chunk(2)[1]
                unit_added = None if added is None else {
                    key: value.chunk(2)[1] if torch.is_tensor(value) and value.shape[0] == sample.shape[0] else value
                    for key, value in added.items()}
            key = (id(unit), size, latents.shape[0])
            if key not in clock._cache:
                clock._cache[key] = control_batch(unit.control, size, latents.shape[0], latents)
            down, mid = unit.model(latents, timestep, encoder_hidden_states=unit_context,
                                   controlnet_cond=clock._cache[key], conditioning_scale=unit.weight,
                                   guess_mode=pooled, added_cond_kwargs=unit_added, return_dict=False)
            if pooled:
                down = [torch.cat([torch.zeros_like(residual), residual]) for residual in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            if down_sum is None:
                down_sum, mid_sum = list(down), mid
            else:
                down_sum = [total_ + residual for total_, residual in zip(down_sum, down, strict=True)]
                mid_sum = mid_sum + mid
        if down_sum is not None:
            kwargs = {**kwargs, "down_block_additional_residuals": down_sum, "mid_block_additional_residual": mid_sum}
        if features is not None:  # the UNet pops them from the list it is given: a fresh one per call
            kwargs = {**kwargs, "down_intrablock_additional_residuals": [feature.clone() for feature in features]}
        return args, kwargs
    return hook


def adapter_features(unit: SteeringUnit, clock: StepClock, size: tuple[int, int], sample: torch.Tensor) -> list:
    """A T2I-Adapter's features of the map, times the unit's weight, for the whole (guided) batch: computed once
    per size, as diffusers' adapter pipelines do (its conditioning factor is our end; the start is honoured too)."""
    key = (id(unit), size, sample.shape[0], "features")
    if key not in clock._cache:
        adapter = unit.model
        control = control_batch(unit.control, size, 1, sample).clamp(min=0)
        if adapter.config.in_channels == 1:  # sketch/canny adapters read one channel (the map is grey anyway)
            control = control.mean(dim=1, keepdim=True)
        with torch.no_grad():
            features = adapter(control.to(adapter.dtype))
        clock._cache[key] = [(feature * unit.weight).to(sample.dtype).repeat(sample.shape[0], 1, 1, 1)
                             for feature in features]
    return clock._cache[key]


def steered_pipeline(base, units: list[SteeringUnit], images_per_batch: int) -> SteeredPipeline:
    """A pipeline of `base`'s class sharing its modules, its UNet a view that carries the units' hook."""
    accepted = inspect.signature(type(base).__init__).parameters
    kwargs = {name: module for name, module in base.components.items() if name in accepted}
    kwargs.update({key: value for key, value in base.config.items()
                   if key in accepted and key not in kwargs and not key.startswith("_")})
    for name, parameter in accepted.items():
        if name not in kwargs and name != "self" and parameter.default is inspect.Parameter.empty:
            kwargs[name] = None
    unet = unit_view(base.unet)
    kwargs["unet"] = unet
    pipeline = type(base)(**kwargs)
    pipeline.set_progress_bar_config(disable=True)
    clock = StepClock()
    unet.register_forward_pre_hook(residuals_hook(units, clock, pipeline, pipeline.vae_scale_factor,
                                                  images_per_batch), with_kwargs=True)
    return SteeredPipeline(pipeline, clock)


class SteeredPipeline:
    """The steered pipeline, called like any: each call starts its clock at step 0 and the step callback moves it.
    Attributes set on it (a refiner swapping the UNet and putting it back) reach the pipeline itself."""

    def __init__(self, pipeline, clock: StepClock):
        object.__setattr__(self, "_pipeline", pipeline)
        object.__setattr__(self, "_clock", clock)

    def __call__(self, *args, **kwargs):
        clock = self._clock
        inner = kwargs.get("callback_on_step_end")

        def advance(pipe, step, timestep, tensors):
            tensors = inner(pipe, step, timestep, tensors) if inner is not None else tensors
            clock.step = step + 1
            return tensors

        clock.reset()
        return self._pipeline(*args, **{**kwargs, "callback_on_step_end": advance})

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def __setattr__(self, name, value):
        setattr(self._pipeline, name, value)

    def __delattr__(self, name):
        delattr(self._pipeline, name)
