"""A1111 sampler and schedule-type names, mapped to diffusers schedulers (diffusers' documented table).

A name we cannot honour is an error, never a silent substitute.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from backend.core.errors import UserError


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str
    options: dict = field(default_factory=dict)
    default_schedule: str = "Uniform"  # what A1111's "Automatic" schedule type means for this sampler
    aliases: tuple[str, ...] = ()
    # Schedule types the scheduler class accepts. Written out for the built-in samplers (a test checks them against
    # diffusers), so validating a request does not import diffusers, which takes seconds; None: ask diffusers.
    schedules: tuple[str, ...] | None = None


ALL_SCHEDULES = ("Uniform", "Karras", "Exponential", "Beta", "SGM Uniform")
SPACING_ONLY = ("Uniform", "SGM Uniform")  # schedulers without the sigma-schedule options


SAMPLERS = MappingProxyType({
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                            "Karras", ("k_dpmpp_2m",), ALL_SCHEDULES),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", {}, "Karras", ("k_dpmpp_sde",), ALL_SCHEDULES),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "Exponential",
                                ("k_dpmpp_2m_sde",), ALL_SCHEDULES),
    "DPM++ 3M SDE": SamplerSpec("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential",
                                ("k_dpmpp_3m_sde",), ALL_SCHEDULES),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", {}, "Karras", ("k_dpm_2",), ALL_SCHEDULES),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", {}, "Karras", ("k_dpm_2_a",), ALL_SCHEDULES),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", {}, "Uniform", ("k_euler_a",), SPACING_ONLY),
    "Euler": SamplerSpec("EulerDiscreteScheduler", {}, "Uniform", ("k_euler",), ALL_SCHEDULES),
    "LMS": SamplerSpec("LMSDiscreteScheduler", {}, "Uniform", ("k_lms",), ALL_SCHEDULES),
    "Heun": SamplerSpec("HeunDiscreteScheduler", {}, "Uniform", ("k_heun",), ALL_SCHEDULES),
    "DDIM": SamplerSpec("DDIMScheduler", {"set_alpha_to_one": False}, "Uniform", ("ddim",), SPACING_ONLY),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, "Uniform", ("plms",), SPACING_ONLY),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {}, "Uniform", ("unipc",), ALL_SCHEDULES),
    "LCM": SamplerSpec("LCMScheduler", {}, "Uniform", ("lcm",), SPACING_ONLY),
})

# A1111 samplers with no diffusers equivalent: named so the error can say why.
UNSUPPORTED_SAMPLERS = MappingProxyType({
    "DPM++ 2S a": "diffusers has no ancestral second-order single-step DPM++ solver",
    "DPM fast": "diffusers has no DPM-Solver-fast scheduler",
    "DPM adaptive": "diffusers has no adaptive-step DPM-Solver scheduler",
    "Restart": "diffusers has no Restart sampler",
})

# Schedule type -> scheduler config flags. "Automatic" resolves to the sampler's own default.
SCHEDULES = MappingProxyType({
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
})
SCHEDULE_NAMES = ("Automatic", *SCHEDULES)


class SamplerError(UserError):
    """A sampler or schedule name that is not known; the message lists the known ones."""

    def __init__(self, message: str):
        super().__init__(None, message)


def sampler_table(extra: Mapping[str, SamplerSpec] | None = None) -> Mapping[str, SamplerSpec]:
    """The built-in samplers plus `extra` (those extensions registered)."""
    return {**SAMPLERS, **extra} if extra else SAMPLERS


def canonical_sampler_name(name: str, extra: Mapping[str, SamplerSpec] | None = None) -> str:
    """Accept A1111's names, its old aliases (k_euler_a) and the combined form ("DPM++ 2M Karras" is
    handled by resolve_sampler)."""
    table = sampler_table(extra)
    for sampler_name, spec in table.items():
        if name == sampler_name or name in spec.aliases:
            return sampler_name
    if name in UNSUPPORTED_SAMPLERS:
        raise SamplerError(f"sampler_name: '{name}' cannot be honoured ({UNSUPPORTED_SAMPLERS[name]}); "
                           f"choose one of {', '.join(table)}")
    raise SamplerError(f"sampler_name: unknown sampler '{name}'; choose one of {', '.join(table)}")


def schedule_api_name(label: str) -> str:
    """A1111's REST API names schedule types in lower case: "SGM Uniform" -> "sgm_uniform"."""
    return label.lower().replace(" ", "_")


def resolve_sampler(sampler_name: str, schedule: str,
                    extra: Mapping[str, SamplerSpec] | None = None) -> tuple[str, str]:
    """(sampler, concrete schedule). Old A1111 names such as "DPM++ 2M Karras" carry the schedule;
    schedule types are accepted by label ("SGM Uniform") or API name ("sgm_uniform")."""
    table = sampler_table(extra)
    schedule = next((label for label in SCHEDULE_NAMES if schedule_api_name(label) == schedule), schedule)
    for schedule_name in SCHEDULES:
        suffix = " " + schedule_name
        if sampler_name.endswith(suffix) and sampler_name[: -len(suffix)] in table:
            sampler_name, schedule = sampler_name[: -len(suffix)], schedule_name
    sampler_name = canonical_sampler_name(sampler_name, extra)
    if schedule not in SCHEDULE_NAMES:
        raise SamplerError(f"scheduler: unknown schedule type '{schedule}'; choose one of {', '.join(SCHEDULE_NAMES)}")
    if schedule == "Automatic":
        schedule = table[sampler_name].default_schedule
    if schedule not in accepted_schedules(table[sampler_name]):
        raise SamplerError(f"scheduler: schedule type '{schedule}' is not available for sampler '{sampler_name}'")
    return sampler_name, schedule


def accepted_schedules(spec: SamplerSpec) -> tuple[str, ...]:
    """The schedule types whose config flags the sampler's scheduler class takes."""
    if spec.schedules is not None:
        return spec.schedules
    accepted = inspect.signature(scheduler_class(spec.scheduler_class).__init__).parameters
    return tuple(name for name, flags in SCHEDULES.items() if all(flag in accepted for flag in flags))


def scheduler_class(name: str):
    """A diffusers scheduler class by name, or None. diffusers is imported on first use, not with this module."""
    import diffusers

    return getattr(diffusers, name, None)


def build_scheduler(sampler_name: str, schedule: str, base_config, extra: Mapping[str, SamplerSpec] | None = None):
    """A fresh scheduler for one job, from the model's own scheduler config (betas, prediction type)."""
    sampler_name, schedule = resolve_sampler(sampler_name, schedule, extra)
    spec = sampler_table(extra)[sampler_name]
    cls = scheduler_class(spec.scheduler_class)
    config = {**dict(base_config), **spec.options, **SCHEDULES[schedule]}
    return cls.from_config(config)


def check_sampler_spec(name: str, spec: SamplerSpec):
    """For samplers added by extensions: a new name, a diffusers scheduler class, a known default schedule."""
    if name in SAMPLERS or name in UNSUPPORTED_SAMPLERS:
        raise SamplerError(f"sampler {name!r} is a built-in name")
    from diffusers import SchedulerMixin

    cls = scheduler_class(spec.scheduler_class)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise SamplerError(f"sampler {name!r}: {spec.scheduler_class!r} is not a diffusers scheduler class")
    if spec.default_schedule not in SCHEDULES:
        raise SamplerError(f"sampler {name!r}: unknown default schedule {spec.default_schedule!r}")
