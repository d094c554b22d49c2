"""The plot's arguments: axis types, A1111's value syntax, and one request per cell.

Every error is a ValueError whose message starts with the argument it is about
("extension_args.xyz_plot.x_values: ..."), so the user knows which box to fix.
"""
from __future__ import annotations

import csv
import io
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

MAX_CELLS = 64  # each cell is a whole generation: a typo like "1-1000" must not queue hours of work
MAX_SEED = 2**32 - 1
ARGUMENTS = ("x_type", "x_values", "y_type", "y_values", "z_type", "z_values", "draw_legend",
             "include_lone_images")  # also the order of A1111-style positional "args"
AXES = ("x", "y", "z")


@dataclass(frozen=True)
class AxisType:
    name: str
    kind: str  # "none", "int", "float", "text" or "prompt_sr": how its values are parsed and applied
    field: str | None  # the request field each value sets
    unit_field: str | None = None  # for the ControlNet axes: the field of every ControlNet unit each value sets


AXIS_TYPES = {axis.name: axis for axis in (
    AxisType("Nothing", "none", None),
    AxisType("Seed", "int", "seed"),
    AxisType("Var. seed", "int", "subseed"),
    AxisType("Var. strength", "float", "subseed_strength"),
    AxisType("Steps", "int", "steps"),
    AxisType("CFG Scale", "float", "cfg_scale"),
    AxisType("Sampler", "text", "sampler_name"),
    AxisType("Checkpoint name", "text", "checkpoint"),
    AxisType("Denoising", "float", "denoising_strength"),  # txt2img: takes effect with the hires fix only
    AxisType("Hires sampler", "text", "hr_sampler_name"),  # txt2img with the hires fix
    AxisType("Refiner checkpoint", "text", "refiner_checkpoint"),
    AxisType("Refiner switch at", "float", "refiner_switch_at"),
    AxisType("Face restore", "text", "restore_faces"),  # values such as "True, False"
    AxisType("Prompt S/R", "prompt_sr", None),
    # sd-webui-controlnet's axes: a value applies to every enabled unit (as its plain values do there)
    AxisType("[ControlNet] Weight", "float", "controlnet_units", "weight"),
    AxisType("[ControlNet] Guidance Start", "float", "controlnet_units", "guidance_start"),
    AxisType("[ControlNet] Guidance End", "float", "controlnet_units", "guidance_end"),
    AxisType("[ControlNet] Model", "text", "controlnet_units", "model"),
    AxisType("[ControlNet] Preprocessor", "text", "controlnet_units", "module"),
    AxisType("[ControlNet] Control Mode", "text", "controlnet_units", "control_mode"),
    AxisType("[ControlNet] Resize Mode", "text", "controlnet_units", "resize_mode"),
    AxisType("[ControlNet] Pre Resolution", "int", "controlnet_units", "processor_res"),
    AxisType("[ControlNet] Pre Threshold A", "float", "controlnet_units", "threshold_a"),
    AxisType("[ControlNet] Pre Threshold B", "float", "controlnet_units", "threshold_b"),
)}
AXIS_TYPE_NAMES = tuple(AXIS_TYPES)

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


def _range_pattern(number: str) -> re.Pattern:
    # "start-end", optionally "(+step)" or "[count]", as in A1111's X/Y/Z plot
    return re.compile(rf"\s*({number})\s*-\s*({number})\s*(?:\(\s*({number})\s*\)|\[\s*(\d+)\s*\])?\s*")


RANGE = {"int": _range_pattern(_INT), "float": _range_pattern(_FLOAT)}


def split_values(text: str) -> list[str]:
    """Comma-separated values; double quotes keep a value with commas together ("a, b",c -> ['a, b', 'c'])."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for row in rows for value in row if value.strip()]


def _number(text: str, kind: str, argument: str):
    try:
        return int(text.replace(" ", "")) if kind == "int" else float(text.replace(" ", ""))
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise ValueError(f"{argument}: '{text}' is not {what}") from None


def _expand_range(match: re.Match, kind: str, argument: str) -> list:
    """start-end (inclusive) by a step (default 1 toward end), or `count` values spread evenly over it."""
    start, end = (_number(match.group(i), kind, argument) for i in (1, 2))
    text = match.group(0).strip()
    if match.group(4) is not None:  # [count]
        count = int(match.group(4))
        if count < 1:
            raise ValueError(f"{argument}: '{text}' asks for {count} values; give at least 1")
        if count > MAX_CELLS:
            raise ValueError(f"{argument}: '{text}' gives {count} values; a plot has at most {MAX_CELLS} cells")
        spread = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
        return [int(round(value, 9)) for value in spread] if kind == "int" else [round(value, 10) for value in spread]
    step = _number(match.group(3), kind, argument) if match.group(3) is not None else (1 if end >= start else -1)
    if step == 0 or (end - start) * step < 0:
        raise ValueError(f"{argument}: '{text}' never gets from {start} to {end} by steps of {step}")
    count = math.floor((end - start) / step + 1e-9) + 1  # the epsilon keeps 0.2-0.8 (+0.2) at 4 values
    if count > MAX_CELLS:
        raise ValueError(f"{argument}: '{text}' gives {count} values; a plot has at most {MAX_CELLS} cells")
    values = [start + step * i for i in range(count)]
    return values if kind == "int" else [round(value, 10) for value in values]


def parse_values(kind: str, text: Any, argument: str) -> list:
    """A1111's value syntax for one axis of `kind`; `argument` (e.g. "extension_args.xyz_plot.x_values")
    starts every error message."""
    if isinstance(text, (list, tuple)):  # REST clients may send the values already split
        values = [str(value).strip() for value in text if str(value).strip()]
    elif isinstance(text, (str, int, float)) and not isinstance(text, bool):
        values = split_values(str(text))
    else:
        raise ValueError(f"{argument}: must be text such as '1, 2, 3'; got {type(text).__name__}")
    if not values:
        raise ValueError(f"{argument}: no values given")
    if kind in ("text", "prompt_sr"):
        return values
    parsed: list = []
    for value in values:
        match = RANGE[kind].fullmatch(value)
        parsed += _expand_range(match, kind, argument) if match else [_number(value, kind, argument)]
        if len(parsed) > MAX_CELLS:
            raise ValueError(f"{argument}: {len(parsed)} or more values; a plot has at most {MAX_CELLS} cells")
    return parsed


@dataclass(frozen=True)
class Axis:
    type: AxisType
    values: tuple  # one empty value for "Nothing": the axis then has a single column/row/grid

    @property
    def used(self) -> bool:
        return self.type.kind != "none"

    def label(self, index: int) -> str:
        value = self.values[index]
        return f"{self.type.name}: {format(value, 'g') if isinstance(value, float) else value}"

    def apply(self, index: int, fields: dict):
        """Set this axis's value in `fields` (the cell's request fields so far: axes apply x, then y, then z,
        so two Prompt S/R axes both replace their text)."""
        value = self.values[index]
        if self.type.kind == "prompt_sr":
            search = self.values[0]
            fields["prompt"] = fields["prompt"].replace(search, value)
            fields["negative_prompt"] = fields["negative_prompt"].replace(search, value)
        elif self.type.unit_field:
            fields[self.type.field] = [{**unit, self.type.unit_field: value} for unit in fields[self.type.field]]
        elif self.used:
            fields[self.type.field] = value


def parse_axis(type_name: Any, values: Any, request, prefix: str, letter: str) -> Axis:
    type_argument, values_argument = f"{prefix}.{letter}_type", f"{prefix}.{letter}_values"
    name = "Nothing" if type_name in (None, "") else type_name
    axis_type = next((t for key, t in AXIS_TYPES.items() if isinstance(name, str) and key.lower() == name.lower()),
                     None)
    if axis_type is None:
        raise ValueError(f"{type_argument}: unknown axis type {name!r}; choose one of {', '.join(AXIS_TYPE_NAMES)}")
    if axis_type.kind == "none":
        return Axis(axis_type, ("",))
    parsed = parse_values(axis_type.kind, values, values_argument)
    if axis_type.unit_field and not getattr(request, axis_type.field, None):
        raise ValueError(f"{values_argument}: the {axis_type.name} axis changes the ControlNet units, and this "
                         "generation has none enabled; enable a unit first")
    # A1111 fixes random seeds up front, so the grid's labels show the real seeds
    if axis_type.field in ("seed", "subseed"):
        parsed = [secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed for seed in parsed]
    if axis_type.kind == "prompt_sr" and parsed[0] not in request.prompt and parsed[0] not in request.negative_prompt:
        raise ValueError(f"{values_argument}: '{parsed[0]}' (the first value, the text to replace) is in neither "
                         "the prompt nor the negative prompt")
    return Axis(axis_type, tuple(parsed))


def _flag(value: Any, argument: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{argument}: must be true or false; got {value!r}")


@dataclass(frozen=True)
class Cell:
    column: int  # x index
    row: int  # y index
    grid: int  # z index
    request: Any  # the validated request this cell generates


@dataclass(frozen=True)
class Plot:
    x: Axis
    y: Axis
    z: Axis
    draw_legend: bool
    include_lone_images: bool
    cells: tuple[Cell, ...]  # z outer, then y, then x: A1111's order


def read_arguments(args: Any, prefix: str) -> dict:
    """The extension's arguments as a dict; A1111's alwayson_scripts style {"args": [...]} is positional."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"{prefix}: must be an object such as {{\"x_type\": \"Seed\", \"x_values\": \"1,2\"}}")
    if set(args) == {"args"} and isinstance(args["args"], (list, tuple)):
        if len(args["args"]) > len(ARGUMENTS):
            raise ValueError(f"{prefix}.args: at most {len(ARGUMENTS)} values ({', '.join(ARGUMENTS)})")
        args = dict(zip(ARGUMENTS, args["args"]))
    unknown = sorted(set(args) - set(ARGUMENTS))
    if unknown:
        raise ValueError(f"{prefix}: unknown argument(s) {', '.join(unknown)}; known: {', '.join(ARGUMENTS)}")
    return args


def _validated(request, fields: dict, argument: str):
    """The request with `fields`, checked by the request's own validators (ranges, sampler names, hires
    limits), since model_copy(update=...) checks nothing."""
    try:
        return type(request)(**fields)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        details = getattr(error, "errors", None)
        if not callable(details):
            raise ValueError(f"{argument}: {error}") from None
        first = details()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", error)).removeprefix("Value error, ")
        raise ValueError(f"{argument}: {where + ': ' if where else ''}{message}") from None


def plan_plot(request, extension: str) -> Plot | None:
    """The plot the request's extension_args[extension] asks for, every cell's request validated before any
    generation starts; None when all three axes are Nothing (a plain generation)."""
    prefix = f"extension_args.{extension}"
    args = read_arguments(request.extension_args.get(extension), prefix)
    x, y, z = (parse_axis(args.get(f"{a}_type"), args.get(f"{a}_values"), request, prefix, a) for a in AXES)
    if not (x.used or y.used or z.used):
        return None
    count = len(x.values) * len(y.values) * len(z.values)
    if count > MAX_CELLS:
        raise ValueError(f"{prefix}: the plot has {count} cells ({len(x.values)} x {len(y.values)} x "
                         f"{len(z.values)}); at most {MAX_CELLS} are allowed")
    include_lone_images = _flag(args.get("include_lone_images"), f"{prefix}.include_lone_images", True)
    draw_legend = _flag(args.get("draw_legend"), f"{prefix}.draw_legend", True)
    base = request.model_dump()
    if not include_lone_images:  # the single images are neither returned nor saved; the grid still is
        base["save_images"] = False
    for letter, axis in zip(AXES, (x, y, z)):  # each value alone first, so an error names its axis
        for index in range(len(axis.values)):
            fields = dict(base)
            axis.apply(index, fields)
            _validated(request, fields, f"{prefix}.{letter}_values")
    cells = []
    for grid in range(len(z.values)):
        for row in range(len(y.values)):
            for column in range(len(x.values)):
                fields = dict(base)
                for axis, index in ((x, column), (y, row), (z, grid)):
                    axis.apply(index, fields)
                cells.append(Cell(column, row, grid, _validated(request, fields, prefix)))
    return Plot(x, y, z, draw_legend, include_lone_images, tuple(cells))
