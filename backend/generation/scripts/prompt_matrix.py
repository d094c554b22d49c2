"""A1111's "Prompt matrix": `a cat|in a hat|on a mat` makes every combination of the parts after the first
(2^(n-1) images in batches of batch_size, one seed, or one more per image), drawn as a labelled grid saved as
prompt_matrix-NNNNN.<grid_format>."""
from __future__ import annotations

import io
import math

from PIL import Image

from backend.core.requests import RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.grid_image import annotated_grid
from backend.generation.scripts.job import ScriptJob

MAX_VARIABLE_PARTS = 6  # 64 images; more is a typo, not a matrix

ARGS = (
    ScriptArg("Put variable parts at start of prompt", False, "checkbox"),
    ScriptArg("Use different seed for each picture", False, "checkbox"),
    ScriptArg("Select prompt", "positive", "radio", choices=("positive", "negative")),
    ScriptArg("Select joining char", "comma", "radio", choices=("comma", "space")),
    ScriptArg("Grid margins (px)", 0, "slider", minimum=0, maximum=500, step=2),
)


def matrix_prompts(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(every combination's prompt, the variable parts); combination i has part k when bit k of i is set."""
    parts = prompt.split("|")
    variable = parts[1:]
    prompts = []
    for combination in range(2 ** len(variable)):
        chosen = [text.strip().strip(",") for n, text in enumerate(variable) if combination & (1 << n)]
        prompts.append(delimiter.join([*chosen, parts[0]] if put_at_start else [parts[0], *chosen]))
    return prompts, [text.strip().strip(",") for text in variable]


def run_prompt_matrix(job: ScriptJob):
    put_at_start, different_seeds, prompt_type, joining, margin = job.args
    request = job.request
    source = request.prompt if prompt_type == "positive" else request.negative_prompt
    field = "prompt" if prompt_type == "positive" else "negative_prompt"
    if "|" not in source:
        raise RequestError(field, "Prompt matrix needs parts separated by | (e.g. 'a cat|in a hat|on a mat')")
    if source.count("|") > MAX_VARIABLE_PARTS:
        raise RequestError(field, f"Prompt matrix: at most {MAX_VARIABLE_PARTS} variable parts "
                                  f"({2 ** MAX_VARIABLE_PARTS} images); got {source.count('|')}")
    prompts, variable = matrix_prompts(source, put_at_start, ", " if joining == "comma" else " ")
    seed = request.seed if request.seed != -1 else job.fixed_seed()
    seeds = [seed + (index if different_seeds else 0) for index in range(len(prompts))]
    pairs = [(text, request.negative_prompt) if field == "prompt" else (request.prompt, text) for text in prompts]
    images, results = [], []
    for start in range(0, len(prompts), request.batch_size):
        # as A1111: the combinations in batches of batch_size (batch count is ignored), each image its own prompt
        chunk = slice(start, start + request.batch_size)
        result = job.generate(job.build(request, {
            field: prompts[start], "seed": seeds[start], "batch_size": len(prompts[chunk]), "n_iter": 1,
            "image_prompts": pairs[chunk], "image_seeds": seeds[chunk]}))
        results.append(result)
        images += result.images
        if result.interrupted:
            break
    first = results[0]
    if first.interrupted or len(images) < len(prompts):
        return first.model_copy(update={"images": images, "interrupted": True})
    pictures = [Image.open(io.BytesIO(image.png)) for image in images]
    rows = 1 << (len(variable) // 2)
    horizontal, vertical = variable[:math.ceil(len(variable) / 2)], variable[math.ceil(len(variable) / 2):]
    column_labels = [[(text, bool(position & (1 << i))) for i, text in enumerate(horizontal)]
                     for position in range(1 << len(horizontal))]
    row_labels = [[(text, bool(position & (1 << i))) for i, text in enumerate(vertical)]
                  for position in range(1 << len(vertical))] if vertical else []
    grid = annotated_grid(pictures, rows, column_labels, row_labels, int(margin))
    grid_image = job.grid_result(grid, images[0], "prompt_matrix")  # the first image's infotext, as A1111
    warnings = list(dict.fromkeys(w for result in results for w in result.warnings))
    return first.model_copy(update={"images": [grid_image, *images], "warnings": warnings})


PROMPT_MATRIX = Script("Prompt matrix", ARGS, run_prompt_matrix)
