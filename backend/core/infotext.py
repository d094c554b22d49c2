"""A1111 "infotext": the generation parameters stored in a PNG's `parameters` text chunk.

    <prompt lines>
    Negative prompt: <negative lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

A value containing "," ":" or a newline is JSON-quoted. The last line counts as parameters only if it
has at least three `key: value` pairs (otherwise it is part of the prompt).

Texts come from files and clients, so parsing is linear in the text and the text is bounded
(MAX_INFOTEXT_CHARACTERS: two prompts at their limit and a long parameter line fit).
"""
from __future__ import annotations

import json
import re
from typing import Any

from backend.core.samplers import SamplerError, resolve_sampler
from backend.core.skip_layer_guidance import INFOTEXT_KEYS as SLG_INFOTEXT_KEYS

# A1111's pattern for one `key: value` pair. Its findall retries from every position, so a long run of words
# without a colon costs quadratic time; `parameter_pairs` finds the same pairs in one pass.
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SPACES = re.compile(r"\s*")
_KEY = re.compile(r"\w[\w \-/]+")
_PLAIN_VALUE = re.compile(r"[^,]*")
MAX_INFOTEXT_CHARACTERS = 100_000
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_number(value: Any) -> str:
    """7.0 -> "7" as A1111 writes whole floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_infotext(prompt: str, negative_prompt: str, parameters: dict[str, Any]) -> str:
    """Parameters with value None are left out; order is kept."""
    line = ", ".join(f"{key}: {quote(format_number(value))}" for key, value in parameters.items()
                     if value is not None)
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """PARAM_PATTERN.findall(line) for a line without newlines, in linear time.

    A match starts with a run of key characters; when that run is not followed by ":", no match can start
    anywhere inside it (each would stop at the same place), so the scan skips past it instead of retrying from
    every position. A quoted value's closing quote is found from a table built once, so a line of many
    unterminated quotes is not rescanned either."""
    pairs: list[tuple[str, str]] = []
    position, end = 0, len(line)
    closings: list[int] | None = None
    while position <= end:
        key_start = _SPACES.match(line, position).end()
        key = _KEY.match(line, key_start)
        if key is None:
            position = key_start + 1
            continue
        if not line.startswith(":", key.end()):
            position = key.end()
            continue
        value_start = _SPACES.match(line, key.end() + 1).end()
        value_end = None
        if line.startswith('"', value_start) and not line.startswith('"', value_start + 1):
            closings = closings if closings is not None else _quote_closings(line)
            closing = closings[value_start + 1]
            if closing != -1 and (closing + 1 == end or line[closing + 1] == ","):
                value_end = closing + 1
        if value_end is None:
            value_end = _PLAIN_VALUE.match(line, value_start).end()
        pairs.append((key.group(0), line[value_start:value_end]))
        position = value_end + 1 if value_end < end else end + 1  # past the comma; a match at the end is last
    return pairs


def _quote_closings(line: str) -> list[int]:
    """closings[i]: the index of the quote that closes a quoted value whose content starts at i (content is
    backslash pairs and characters other than backslash and quote), or -1 when none does."""
    size = len(line)
    closings = [-1] * (size + 2)
    for index in range(size - 1, -1, -1):
        char = line[index]
        if char == '"':
            closings[index] = index
        elif char == "\\":
            closings[index] = closings[index + 2] if index + 1 < size else -1
        else:
            closings[index] = closings[index + 1]
    return closings


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse infotext into {"Prompt", "Negative prompt", key: value...}; `Size` also gives Size-1/Size-2.
    Only the first MAX_INFOTEXT_CHARACTERS are read."""
    *lines, last = text[:MAX_INFOTEXT_CHARACTERS].strip().split("\n")
    pairs = parameter_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        last, pairs = "", []
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in pairs:
        value = _unquote(value.strip())
        result[key] = value
        size = SIZE_PATTERN.match(value) if key == "Size" else None
        if size:
            result["Size-1"], result["Size-2"] = size.group(1), size.group(2)
    result.setdefault("Clip skip", "1")
    return result


# A1111 writes these only for hires-fix images; "Denoising strength" belongs to img2img and hires alike.
HIRES_CONVERTERS = {"Denoising strength": ("denoising_strength", float), "Hires upscale": ("hr_scale", float),
                    "Hires steps": ("hr_second_pass_steps", int), "Hires upscaler": ("hr_upscaler", str),
                    "Hires sampler": ("hr_sampler_name", str), "Hires schedule type": ("hr_scheduler", str),
                    "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str),
                    "Hires CFG Scale": ("hr_cfg", float), "Hires checkpoint": ("hr_checkpoint_name", str)}

def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(value)
    return value.lower() == "true"


# Noise and tiling keys (A1111's names; "Tiling axes" is ours, for X-only / Y-only tiling).
NOISE_CONVERTERS = {"Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
                    "ENSD": ("eta_noise_seed_delta", int), "RNG": ("randn_source", str),
                    "Tiling": ("tiling", _boolean), "Tiling axes": ("tiling_axes", str),
                    "Refiner": ("refiner_checkpoint", str), "Refiner switch at": ("refiner_switch_at", float),
                    "Hires refiner": ("hires_fix_refiner_pass", str)}


def request_fields(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parsed infotext -> the Txt2ImgRequest fields it determines (only those present), hires fix included.

    Old A1111 infotext writes the schedule inside the sampler name ("DPM++ 2M Karras"); that is split.
    Model hash/name are returned for the caller to look up.
    """
    fields: dict[str, Any] = {"prompt": parameters.get("Prompt", ""),
                              "negative_prompt": parameters.get("Negative prompt", "")}
    converters = {"Steps": ("steps", int), "CFG scale": ("cfg_scale", float), "Seed": ("seed", int),
                  "Size-1": ("width", int), "Size-2": ("height", int), "Sampler": ("sampler_name", str),
                  "Schedule type": ("scheduler", str), "Model hash": ("model_hash", str), "Model": ("model_name", str),
                  "Clip skip": ("clip_skip", int), "VAE": ("sd_vae", str),
                  "Distilled CFG Scale": ("distilled_cfg_scale", float), "Shift": ("shift", float),
                  **{key: (name, str if key == "SLG layers" else float) for key, name in SLG_INFOTEXT_KEYS.items()}}
    converters.update(HIRES_CONVERTERS)
    converters.update(NOISE_CONVERTERS)
    for key, (name, convert) in converters.items():
        if key in parameters:
            try:
                fields[name] = convert(parameters[key])
            except ValueError:
                continue  # a malformed value is left out rather than guessed
    for key, names in (("Hires resize", ("hr_resize_x", "hr_resize_y")),
                       ("Seed resize from", ("seed_resize_from_w", "seed_resize_from_h"))):
        size = SIZE_PATTERN.match(str(parameters.get(key, "")))
        if size:
            fields[names[0]], fields[names[1]] = int(size.group(1)), int(size.group(2))
    if parameters.get("Face restoration"):  # A1111 writes the restorer's name when Restore faces was on
        fields["restore_faces"] = True
        fields["face_restoration_model"] = parameters["Face restoration"]
    if any(key in parameters for key in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps")):
        fields["enable_hr"] = True
    if "sampler_name" in fields:
        try:
            sampler, schedule = resolve_sampler(fields["sampler_name"], fields.get("scheduler", "Automatic"))
            fields["sampler_name"] = sampler
            if "scheduler" in fields or sampler != parameters["Sampler"]:
                fields["scheduler"] = schedule
        except SamplerError:
            pass  # kept as written; the form shows it and validation explains the problem on Generate
    return fields
