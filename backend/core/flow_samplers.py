"""Samplers for the flow-matching models (Flux.1, SD3/SD3.5) under A1111/Forge names.

Their schedulers predict a velocity, so the SD samplers' diffusers classes do not apply; these are diffusers'
flow-matching ones (or a multistep solver switched to flow sigmas). `Shift` moves the schedule towards the noisy end,
as Forge's Shift does: 0 keeps the model's own (Flux dev shifts by the image size). "Euler a" is not offered: its
flow version draws noise from the global random generator, so a seed would not give the same image twice.
"""
from __future__ import annotations

from types import MappingProxyType

from backend.core.samplers import SamplerError, SamplerSpec, canonical_sampler_name, resolve_sampler

_SIGMA_SCHEDULES = ("Uniform", "Karras", "Exponential", "Beta")
_FLOW_SOLVER = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

FLOW_SAMPLERS = MappingProxyType({
    "Euler": SamplerSpec("FlowMatchEulerDiscreteScheduler", {}, "Uniform", (), _SIGMA_SCHEDULES),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler",
                            {"algorithm_type": "dpmsolver++", "solver_order": 2, **_FLOW_SOLVER}, "Uniform", (),
                            ("Uniform",)),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", dict(_FLOW_SOLVER), "Uniform", (), ("Uniform",)),
})
SHIFT_RANGE = (0.0, 20.0)  # 0: the model's own shift


def resolve_flow_sampler(sampler_name: str, schedule: str, family_label: str) -> tuple[str, str]:
    """(sampler, concrete schedule) for a flow model; "Automatic" is the uniform (Forge: "Simple") schedule.
    A sampler or schedule these models cannot use is the user's error, naming the ones they can."""
    name, resolved = resolve_sampler(sampler_name, "Uniform" if schedule == "Automatic" else schedule)
    name = canonical_sampler_name(name)
    if name not in FLOW_SAMPLERS:
        raise SamplerError(f"sampler_name: '{name}' does not work with {family_label} (a flow-matching model); "
                           f"choose one of {', '.join(FLOW_SAMPLERS)}")
    if resolved not in FLOW_SAMPLERS[name].schedules:
        raise SamplerError(f"scheduler: schedule type '{resolved}' is not available for sampler '{name}' with "
                           f"{family_label}; choose one of {', '.join(FLOW_SAMPLERS[name].schedules)}")
    return name, resolved


def build_flow_scheduler(sampler_name: str, schedule: str, base_config, shift: float = 0.0):
    """A fresh scheduler for one job from the model's flow-matching scheduler config (its shift, dynamic shifting)."""
    from backend.core.samplers import SCHEDULES, scheduler_class

    spec = FLOW_SAMPLERS[sampler_name]
    config = {**dict(base_config), **spec.options, **SCHEDULES[schedule]}
    if shift:
        config.update(shift=shift, use_dynamic_shifting=False)
    if spec.options.get("use_flow_sigmas"):  # multistep solvers name the shift differently
        config["flow_shift"] = config.pop("shift", 1.0)
    return scheduler_class(spec.scheduler_class).from_config(config)
