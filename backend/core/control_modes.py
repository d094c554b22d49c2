"""sd-webui-controlnet's enumerations as its API spells them: names, the ints older clients send (their order in
the extension's enums), and the aliases the extension still accepts. No torch."""
from __future__ import annotations

from enum import Enum, StrEnum

from backend.core.errors import UserError


class ResizeMode(StrEnum):
    """How the control map is fitted to the generation size."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"  # the extension's INNER_FIT, its default
    RESIZE_AND_FILL = "Resize and Fill"  # the extension's OUTER_FIT


class ControlMode(StrEnum):
    BALANCED = "Balanced"
    PROMPT_MORE_IMPORTANT = "My prompt is more important"
    CONTROLNET_MORE_IMPORTANT = "ControlNet is more important"


class HiresOption(StrEnum):
    """A1111's hr_option for a unit: on which pass of hires fix the unit applies."""

    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": ResizeMode.CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": ResizeMode.RESIZE_AND_FILL,
    "Scale to Fit (Inner Fit)": ResizeMode.CROP_AND_RESIZE,
    "Envelope (Outer Fit)": ResizeMode.RESIZE_AND_FILL,
}


def parse_mode(enum: type[Enum], value, field: str, aliases: dict | None = None):
    """`value` as a member of `enum`: a member, its name as the extension writes it, an alias, or its index (the
    ints sd-webui-controlnet's older API clients send). Anything else is a UserError listing the choices."""
    if isinstance(value, enum):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(enum):
        return list(enum)[value]
    if isinstance(value, str):
        if aliases and value in aliases:
            return aliases[value]
        for member in enum:
            if value.strip().lower() in (member.value.lower(), member.name.lower()):
                return member
    choices = ", ".join(f"{index} or '{member.value}'" for index, member in enumerate(enum))
    raise UserError(field, f"unknown value {value!r}; one of {choices}")


def parse_resize_mode(value, field: str = "resize_mode") -> ResizeMode:
    """As the extension reads it: 3 (A1111's "Just Resize (latent upscale)") and larger ints mean Just Resize."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= len(ResizeMode):
        return ResizeMode.JUST_RESIZE
    return parse_mode(ResizeMode, value, field, RESIZE_MODE_ALIASES)


def parse_control_mode(value, field: str = "control_mode") -> ControlMode:
    return parse_mode(ControlMode, value, field)


def parse_hires_option(value, field: str = "hr_option") -> HiresOption:
    return parse_mode(HiresOption, value, field)
