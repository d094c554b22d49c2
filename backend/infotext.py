"""A1111 "infotext": the generation parameters stored in a PNG's `parameters` text chunk.

    <prompt lines>
    Negative prompt: <negative lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

A value containing "," ":" or a newline is JSON-quoted. The last line counts as parameters only if it
has at least three `key: value` pairs (otherwise it is part of the prompt).
"""
from __future__ import annotations

import json
import re
from typing import Any

from backend.samplers import SamplerError, resolve_sampler

PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
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


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse infotext into {"Prompt", "Negative prompt", key: value...}; `Size` also gives Size-1/Size-2."""
    *lines, last = text.strip().split("\n")
    if len(PARAM_PATTERN.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in PARAM_PATTERN.findall(last):
        value = _unquote(value.strip())
        result[key] = value
        size = SIZE_PATTERN.match(value) if key == "Size" else None
        if size:
            result["Size-1"], result["Size-2"] = size.group(1), size.group(2)
    result.setdefault("Clip skip", "1")
    return result


# A1111 writes these only for hires-fix images; "Denoising strength" belongs to img2img and hires alike.
HIRES_CONVERTERS = {"Denoising strength": ("denoising_strength", float), "Hires upscale": ("hr_scale", float),
                    "Hires steps": ("hr_second_pass_steps", int), "Hires upscaler": ("hr_upscaler", str)}


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
                  "Clip skip": ("clip_skip", int), "VAE": ("sd_vae", str)}
    converters.update(HIRES_CONVERTERS)
    for key, (name, convert) in converters.items():
        if key in parameters:
            try:
                fields[name] = convert(parameters[key])
            except ValueError:
                continue  # a malformed value is left out rather than guessed
    if "Hires resize" in parameters:
        size = SIZE_PATTERN.match(parameters["Hires resize"])
        if size:
            fields["hr_resize_x"], fields["hr_resize_y"] = int(size.group(1)), int(size.group(2))
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
