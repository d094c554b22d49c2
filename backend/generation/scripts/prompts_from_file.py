"""A1111's "Prompts from file or textbox": one generation per line. A line is a prompt, or options in A1111's
command-line form (`--prompt "a cat" --steps 10 --negative_prompt "blurry"`) that change the request for it."""
from __future__ import annotations

import shlex

from backend.core.requests import RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.job import ScriptJob

MAX_LINES = 1000


def _flag(text: str) -> bool:
    return text.lower() == "true"


# A1111's prompt tags that mean something here: tag -> (request field, converter)
LINE_OPTIONS = {
    "sd_model": ("checkpoint", str), "prompt": ("prompt", str), "negative_prompt": ("negative_prompt", str),
    "styles": ("styles", None), "seed": ("seed", int), "sampler_name": ("sampler_name", str),
    "sampler_index": ("sampler_name", str), "scheduler": ("scheduler", str), "batch_size": ("batch_size", int),
    "n_iter": ("n_iter", int), "steps": ("steps", int), "cfg_scale": ("cfg_scale", float), "width": ("width", int),
    "height": ("height", int), "denoising_strength": ("denoising_strength", float), "clip_skip": ("clip_skip", int),
}

ARGS = (
    ScriptArg("Iterate seed every line", False, "checkbox"),
    ScriptArg("Use same random seed for all lines", False, "checkbox"),
    ScriptArg("Insert prompts at the", "start", "radio", choices=("start", "end")),
    ScriptArg("List of prompt inputs", "", "textarea"),
)


def parse_line(line: str, number: int) -> dict:
    """A line's request changes ({"prompt": line} for a plain prompt), or RequestError naming the line."""
    if "--" not in line:
        return {"prompt": line}
    field = f"script_args[3] line {number}"
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise RequestError(field, f"cannot read {line!r}: {error}") from None
    changes: dict = {}
    position = 0
    while position < len(words):
        tag = words[position]
        if not tag.startswith("--") or tag[2:] not in LINE_OPTIONS:
            raise RequestError(field, f"unknown option {tag!r}; known: "
                                      f"{', '.join('--' + name for name in LINE_OPTIONS)}")
        name, convert = LINE_OPTIONS[tag[2:]]
        values = []
        position += 1
        while position < len(words) and not words[position].startswith("--"):
            values.append(words[position])
            position += 1
        if not values:
            raise RequestError(field, f"{tag} needs a value")
        try:
            changes[name] = values if convert is None else convert(" ".join(values))
        except ValueError:
            raise RequestError(field, f"{tag}: {' '.join(values)!r} is not a valid value") from None
    return changes


def run_prompts_from_file(job: ScriptJob):
    iterate_seed, same_seed, position, text = job.args
    request = job.request
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise RequestError("script_args[3]", "List of prompt inputs: give at least one line")
    if len(lines) > MAX_LINES:
        raise RequestError("script_args[3]", f"List of prompt inputs: at most {MAX_LINES} lines; got {len(lines)}")
    changes = [parse_line(line, number) for number, line in enumerate(lines, 1)]
    seed = request.seed
    if (iterate_seed or same_seed) and seed == -1:
        seed = job.fixed_seed()
    line_requests = []
    for number, change in enumerate(changes, 1):  # every line is checked before the first one runs
        change = dict(change)
        for field in ("prompt", "negative_prompt"):
            own, base = change.get(field), getattr(request, field)
            if own and base:
                change[field] = f"{own} {base}" if position == "start" else f"{base} {own}"
        change.setdefault("seed", seed)
        try:
            line_requests.append(job.build(request, change))
        except RequestError as error:
            raise RequestError(f"script_args[3] line {number}: {error.field}", error.message) from None
        if iterate_seed:
            seed += request.batch_size * request.n_iter
    images, warnings, result = [], [], None
    for line_request in line_requests:
        result = job.generate(line_request)
        images += result.images
        warnings += result.warnings
        if result.interrupted:
            break
    return result.model_copy(update={"images": images, "warnings": list(dict.fromkeys(warnings))})


PROMPTS_FROM_FILE = Script("Prompts from file or textbox", ARGS, run_prompts_from_file)
