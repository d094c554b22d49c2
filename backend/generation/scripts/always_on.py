"""A1111's always-on scripts that this server has the features of (its processing_scripts: Sampler, Seed,
Refiner): listed by /sdapi/v1/scripts and /script-info as A1111 lists them (is_alwayson), and addressable in
`alwayson_scripts` with A1111's positional args, which set the request fields they stand for (`fields`)."""
from __future__ import annotations

from typing import Any

from backend.core.requests import RequestError
from backend.core.scripts import Script, ScriptArg


def _not_selectable(job):
    raise RequestError("script_name", "an always-on script runs with every job; it cannot be selected")


def always_on_scripts(sampler_names: list[str], schedule_names: list[str], checkpoint_titles: list[str]
                      ) -> list[Script]:
    """A1111's order of their ui() values, its labels, defaults and ranges."""
    sampler = Script("Sampler", (
        ScriptArg("Sampling steps", 20, "slider", minimum=1, maximum=150, step=1),
        ScriptArg("Sampling method", "DPM++ 2M", "dropdown", choices=tuple(sampler_names)),
        ScriptArg("Schedule type", "Automatic", "dropdown", choices=tuple(schedule_names)),
    ), _not_selectable, always_on=True)
    seed = Script("Seed", (
        ScriptArg("Seed", -1, "number", minimum=-1, maximum=2**32 - 1),
        ScriptArg("Extra", False, "checkbox"),
        ScriptArg("Variation seed", -1, "number", minimum=-1, maximum=2**32 - 1),
        ScriptArg("Variation strength", 0.0, "slider", minimum=0, maximum=1, step=0.01),
        ScriptArg("Resize seed from width", 0, "slider", minimum=0, maximum=2048, step=8),
        ScriptArg("Resize seed from height", 0, "slider", minimum=0, maximum=2048, step=8),
    ), _not_selectable, always_on=True)
    refiner = Script("Refiner", (
        ScriptArg("Refiner", False, "checkbox"),
        ScriptArg("Checkpoint", "", "dropdown", choices=("", "None", *checkpoint_titles)),
        ScriptArg("Switch at", 0.8, "slider", minimum=0.01, maximum=1.0, step=0.01),
    ), _not_selectable, always_on=True)
    return [sampler, seed, refiner]


def always_on_fields(script: Script, values: list[Any]) -> dict[str, Any]:
    """The request fields an always-on script's args set, as its A1111 setup() does (Seed's variation and resize
    only with Extra on; Refiner only when enabled with a checkpoint)."""
    args = script.check_args(values)
    if script.name == "sampler":
        return {"steps": args[0], "sampler_name": args[1], "scheduler": args[2]}
    if script.name == "seed":
        seed, extra, subseed, strength, width, height = args
        fields: dict[str, Any] = {"seed": int(seed)}
        if extra and strength > 0:
            fields |= {"subseed": int(subseed), "subseed_strength": strength}
        if extra and width > 0 and height > 0:
            fields |= {"seed_resize_from_w": width, "seed_resize_from_h": height}
        return fields
    enabled, checkpoint, switch_at = args
    if not enabled or checkpoint in ("", "None"):
        return {}
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}
