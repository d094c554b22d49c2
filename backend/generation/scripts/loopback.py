"""A1111's "Loopback" (img2img): each image is fed back as the next one's input, `Loops` times, the denoising
strength moving from the request's to the final one along a curve; one image per loop (A1111 sets batch size 1).
Every iteration's image is saved; with more than one, a one-row grid of them (saved with grid_save, shown first
with return_grid)."""
from __future__ import annotations

import io
import math

from PIL import Image

from backend.core.requests import RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.grid_image import annotated_grid
from backend.generation.scripts.job import ScriptJob

ARGS = (
    ScriptArg("Loops", 4, "slider", minimum=1, maximum=32, step=1),
    ScriptArg("Final denoising strength", 0.5, "slider", minimum=0, maximum=1, step=0.01),
    ScriptArg("Denoising strength curve", "Linear", "dropdown", choices=("Aggressive", "Linear", "Lazy")),
    ScriptArg("Append interrogated prompt at each iteration", "None", "radio", choices=("None", "CLIP", "DeepBooru")),
)


def loop_strength(initial: float, final: float, curve: str, loop: int, loops: int) -> float:
    """A1111's calculate_denoising_strength for the loop'th image (0-based)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    shape = {"Aggressive": math.sin(progress * math.pi * 0.5),
             "Lazy": 1 - math.cos(progress * math.pi * 0.5)}.get(curve, progress)
    return initial + (final - initial) * shape


def run_loopback(job: ScriptJob):
    loops, final_strength, curve, interrogation = job.args
    loops = int(loops)
    if interrogation != "None":
        raise RequestError("script_args[3]", "Append interrogated prompt: no interrogation model (CLIP, DeepBooru) "
                                             "is available in this server; use None")
    request = job.request
    seed = request.seed if request.seed != -1 else job.fixed_seed()
    history, result, warnings = [], None, []
    for _batch in range(request.n_iter):
        init_image, strength, fill = request.init_image, request.denoising_strength, request.inpainting_fill
        last = None
        for loop in range(loops):
            # batch size 1 and A1111's keys in every infotext, as A1111's loopback.py
            result = job.generate(job.build(request, {
                "init_image": init_image, "seed": seed, "denoising_strength": strength, "batch_size": 1,
                "n_iter": 1, "inpainting_fill": fill,
                "infotext_extra": {"Final denoising strength": final_strength, "Denoising curve": curve}}))
            warnings += result.warnings
            if result.interrupted or not result.images:
                break
            seed = result.images[0].seed + 1
            strength = loop_strength(request.denoising_strength, final_strength, curve, loop + 1, loops)
            last = result.images[0]
            init_image, fill = last.png, 1  # masked content "original" from the second loop on, as A1111
            if request.n_iter == 1:
                history.append(last)
        if request.n_iter > 1 and last is not None and not result.interrupted:
            history.append(last)
        if result.interrupted:
            break
    images = list(history)
    if len(history) > 1 and (job.options.return_grid or job.options.grid_save):
        pictures = [Image.open(io.BytesIO(image.png)) for image in history]
        grid = job.grid_result(annotated_grid(pictures, 1, [], []), history[0], "grid")
        if job.options.return_grid:
            images.insert(0, grid)
    return result.model_copy(update={"images": images, "warnings": list(dict.fromkeys(warnings))})


LOOPBACK = Script("Loopback", ARGS, run_loopback, tabs=("img2img",))
