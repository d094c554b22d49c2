"""The Script menu's scripts (A1111's "Script" dropdown), as data: a title, its arguments in A1111's positional
order (each with its label, default and range: what /sdapi/v1/script-info lists and the form builds), the tabs it
appears on, and `run(job)`. A script turns one request into images only through `job.generate`, the app's one
generation path (backend.generation.scripts holds the built-in ones; extensions add theirs with api.add_script)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.core.requests import RequestError

ARG_KINDS = ("checkbox", "slider", "number", "text", "textarea", "radio", "dropdown", "checkboxgroup")
FORM_TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class ScriptArg:
    """One positional argument. `kind`: how the form shows it (ARG_KINDS). A radio/dropdown takes one of
    `choices` (or its index, as A1111's index-typed radios do over the API)."""
    label: str
    value: Any
    kind: str = "text"
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    by_index: bool = False  # A1111 passes this radio's index; a name is accepted too, either becomes the name
    hidden: bool = False  # not shown in the form (SD upscale's first argument: A1111's "info" text)

    def __post_init__(self):
        if self.kind not in ARG_KINDS:
            raise ValueError(f"script argument {self.label!r}: kind must be one of {ARG_KINDS}; got {self.kind!r}")

    def check(self, value: Any, field_name: str) -> Any:
        """The value, of this argument's type and in its range, or RequestError naming `field_name`."""
        if self.kind == "checkbox":
            if not isinstance(value, bool):
                raise RequestError(field_name, f"{self.label}: must be true or false; got {value!r}")
            return value
        if self.kind in ("slider", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RequestError(field_name, f"{self.label}: must be a number; got {value!r}")
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if not low <= value <= high:
                raise RequestError(field_name, f"{self.label}: must be between {self.minimum:g} and "
                                               f"{self.maximum:g}; got {value}")
            return int(value) if isinstance(self.value, int) and float(value).is_integer() else value
        if self.kind == "checkboxgroup":  # some of `choices`, as a list
            choices = list(self.choices or ())
            if not isinstance(value, list) or any(item not in choices for item in value):
                raise RequestError(field_name, f"{self.label}: must be a list of some of {choices}; got {value!r}")
            return [choice for choice in choices if choice in value]
        if self.kind in ("radio", "dropdown") and self.choices is not None:
            choices = list(self.choices)
            if isinstance(value, int) and not isinstance(value, bool) and self.by_index:
                if not 0 <= value < len(choices):
                    raise RequestError(field_name, f"{self.label}: index {value} is not among the "
                                                   f"{len(choices)} choices {choices}")
                return choices[value]
            if value not in choices:
                raise RequestError(field_name, f"{self.label}: must be one of {choices}; got {value!r}")
            return value
        if value is None:
            return ""
        if not isinstance(value, str):
            raise RequestError(field_name, f"{self.label}: must be text; got {value!r}")
        return value

    def info(self) -> dict[str, Any]:
        """A1111's /script-info entry for this argument."""
        return {"label": self.label, "value": self.value, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": list(self.choices) if self.choices is not None else None}


@dataclass(frozen=True)
class Script:
    title: str  # A1111's title, shown in the menu; the API's script_name is its lower-case form
    args: tuple[ScriptArg, ...]
    run: Callable[[Any], Any]  # run(job: backend.generation.scripts.ScriptJob) -> GenerationResult
    tabs: tuple[str, ...] = FORM_TABS
    extension: str | None = None  # None: built in
    always_on: bool = False  # runs with every job (A1111's AlwaysVisible): listed, never selected by script_name

    @property
    def name(self) -> str:
        return self.title.lower()

    def check_args(self, values: list[Any]) -> list[Any]:
        """The positional arguments, checked; missing trailing ones take their defaults, as A1111 fills them."""
        if len(values) > len(self.args):
            raise RequestError("script_args", f"{self.title} takes at most {len(self.args)} arguments "
                                              f"({', '.join(arg.label for arg in self.args)}); got {len(values)}")
        return [arg.check(values[i] if i < len(values) else arg.value, f"script_args[{i}]")
                for i, arg in enumerate(self.args)]

    def info(self, tab: str) -> dict[str, Any]:
        """A1111's /script-info entry for this script on `tab` (A1111 lists a script once per tab)."""
        return {"name": self.name, "is_alwayson": self.always_on, "is_img2img": tab == "img2img",
                "args": [arg.info() for arg in self.args]}


def find_script(scripts: list[Script], name: str, tab: str) -> Script:
    """The script called `name` (its title in any case) on `tab`, or RequestError naming script_name."""
    offered = [script for script in scripts if tab in script.tabs and not script.always_on]
    for script in offered:
        if script.name == name.strip().lower():
            return script
    raise RequestError("script_name", f"no script {name!r} on {tab}; available: "
                                      f"{', '.join(script.name for script in offered) or 'none'}")
