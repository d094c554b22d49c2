"""Score the built-in demo ControlNet through the app's own generation path (Services, request objects, the job
queue): outlines drawn by hand (wobbly, black on white) of a shape at a place, prompts that name a colour but no
position, read back with the shapes detector; the same prompts without the ControlNet as a baseline; and weight 0
against no ControlNet, pixel for pixel. Writes a report and a sample sheet beside the model.

    python -m tools.evaluate_demo_controlnet [--controlnet backend/models/builtin/shapes-demo-controlnet.safetensors]
"""
from __future__ import annotations

import argparse
import io
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backend.core.requests import Txt2ImgRequest
from backend.core.settings import Settings
from backend.models.builtin_model import BUILTIN_FILE
from backend.services import build_services
from tools.shapes_world import POSITIONS, RADII, SIZE, detect

DEFAULT_CONTROLNET = BUILTIN_FILE.with_name("shapes-demo-controlnet.safetensors")
STEPS, CFG, SAMPLER = 20, 7.0, "DPM++ 2M"
CASE_COLOURS = (("red", "blue"), ("yellow", "purple"), ("green", "white"), ("white", "black"), ("orange", "green"),
                ("blue", "yellow"))


def drawn_outline(shape: str, position: str, size: int = 256, seed: int = 0, width: int = 5) -> bytes:
    """A PNG of a hand-drawn-looking outline, black on white: `shape` ("circle", "square", "triangle", "star")
    centred in the `position` cell of the 3x3 grid, at the shapes world's default size, wobbling a little."""
    rng = random.Random(seed)
    column, row = POSITIONS[position]
    r = RADII[None] / SIZE * size  # the world's default size, kept off the border as the world keeps it
    cx, cy = (min(max((cell + 0.5) * size / 3, r * 1.1), size - r * 1.1) for cell in (column, row))
    if shape == "circle":
        corners = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif shape == "square":
        corners = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    elif shape == "triangle":
        corners = [(0, -1), (1, 0.85), (-1, 0.85)]
    else:
        corners = [((1 if k % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                    (1 if k % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    points = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        for k in range(6):
            x, y = x0 + (x1 - x0) * k / 6, y0 + (y1 - y0) * k / 6
            wobble = 1 + rng.uniform(-0.04, 0.04)
            points.append((cx + r * x * wobble, cy + r * y * wobble))
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line(points + points[:1], fill="black", width=width, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    shape: str
    position: str
    module: str  # the preprocessor the unit runs on the drawing
    seeds_per_prompt: int


def cases(seeds_per_prompt: int) -> list[Case]:
    """The issue's bar first (a circle top-left, read by the invert preprocessor), then other shapes, places and
    preprocessors."""
    few = max(2, seeds_per_prompt // 4)
    return [Case("circle", "top left", "invert", seeds_per_prompt),
            Case("square", "bottom right", "invert", few), Case("triangle", "centre", "invert", few),
            Case("star", "top right", "invert", few), Case("circle", "bottom left", "scribble_xdog", few),
            Case("square", "top", "canny", few)]


def prompt_for(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


class Evaluator:
    """Services over a temporary models folder holding only the ControlNet under test (the built-in checkpoint is
    the model, as on a fresh install)."""

    def __init__(self, controlnet: Path, work: Path):
        folder = work / "models" / "ControlNet"
        folder.mkdir(parents=True)
        self.model_name = "shapes-demo-controlnet-under-test"
        shutil.copy(controlnet, folder / f"{self.model_name}.safetensors")
        self.services = build_services(Settings(models_dir=work / "models", outputs_dir=work / "outputs",
                                                cache_dir=work / "cache", device="cpu"))

    def generate(self, prompt: str, seed: int, count: int, unit: dict | None) -> list[Image.Image]:
        values = {"prompt": prompt, "seed": seed, "batch_size": count, "steps": STEPS, "cfg_scale": CFG,
                  "sampler_name": SAMPLER, "width": 64, "height": 64, "save_images": False,
                  "controlnet_units": [unit] if unit else []}
        job = self.services.jobs.run_and_wait(self.services.build_request(Txt2ImgRequest, values), timeout=1800)
        if job.status != "done":
            raise RuntimeError(f"generation failed: {job.error}")
        return [Image.open(io.BytesIO(image.png)).convert("RGB") for image in job.result.images[:count]]

    def unit(self, case: Case, weight: float = 1.0) -> dict:
        return {"module": case.module, "model": self.model_name, "weight": weight,
                "image": drawn_outline(case.shape, case.position), "save_detected_map": False}

    def close(self):
        self.services.close()


def score(images: list[Image.Image], case: Case, colours: list[str]) -> dict:
    found = [detect(image) for image in images]
    return {"images": len(found),
            "place": sum(f.position == case.position for f in found),
            "shape": sum(f.shape == case.shape for f in found),
            "both": sum(f.position == case.position and f.shape == case.shape for f in found),
            "colour": sum(f.colour == colour for f, colour in zip(found, colours))}


def evaluate(controlnet: Path, seeds_per_prompt: int = 7, with_baseline: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as work:
        evaluator = Evaluator(controlnet, Path(work))
        try:
            results, sheet_rows = [], []
            for case in cases(seeds_per_prompt):
                controlled, plain, colours = [], [], []
                for index, (colour, background) in enumerate(CASE_COLOURS):
                    prompt = prompt_for(case.shape, colour, background)
                    seed = 1000 * (index + 1)
                    controlled += evaluator.generate(prompt, seed, case.seeds_per_prompt, evaluator.unit(case))
                    if with_baseline:
                        plain += evaluator.generate(prompt, seed, case.seeds_per_prompt, None)
                    colours += [colour] * case.seeds_per_prompt
                results.append({"case": case, "controlnet": score(controlled, case, colours),
                                "baseline": score(plain, case, colours) if plain else None})
                print(f"{case}: {results[-1]['controlnet']} baseline {results[-1]['baseline']}", flush=True)
                drawing = Image.open(io.BytesIO(drawn_outline(case.shape, case.position))).convert("RGB")
                sheet_rows.append([drawing.resize((64, 64), Image.LANCZOS), *controlled[::case.seeds_per_prompt],
                                   *controlled[1::case.seeds_per_prompt]])
            first = cases(seeds_per_prompt)[0]
            prompt = prompt_for(first.shape, *CASE_COLOURS[0])
            plain = evaluator.generate(prompt, 7, 2, None)
            weightless = evaluator.generate(prompt, 7, 2, evaluator.unit(first, weight=0.0))
            exact = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, weightless))
        finally:
            evaluator.close()
    return {"results": results, "weight_0_exact": exact, "sheet_rows": sheet_rows}


def save_sheet(rows: list[list[Image.Image]], path: Path):
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (66 * columns, 66 * len(rows)), "gray")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (66 * c + 1, 66 * r + 1))
    sheet.save(path)


def shown_path(path: Path) -> str:
    """`path` relative to the checkout when it is inside it (the report is committed)."""
    root = Path(__file__).resolve().parents[1]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def write_report(outcome: dict, path: Path, controlnet: Path, sheet: Path):
    lines = ["# Built-in demo ControlNet: evaluation", "",
             f"ControlNet: `{shown_path(controlnet)}` on the built-in demo model. Produced by "
             "`python -m tools.evaluate_demo_controlnet`, through the app's request objects and job queue.", "",
             f"Each case: a hand-drawn-looking outline (black on white, 256x256, wobbly, 5 px line) given to a "
             f"ControlNet unit with the named preprocessor (weight 1, Balanced, Crop and Resize); prompts "
             f"\"a <colour> <shape> on a <background> background\" naming no position, over {len(CASE_COLOURS)} "
             f"colour pairs; 64x64, {SAMPLER}, {STEPS} steps, CFG {CFG}; read back with the detector in "
             "`tools/shapes_world.py`. Baseline: the same prompts and seeds without the ControlNet.", "",
             "| outline | preprocessor | images | right place | right shape | both | prompt's colour | "
             "baseline: place / shape / both |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in outcome["results"]:
        case, got, base = result["case"], result["controlnet"], result["baseline"]
        count = got["images"]
        base_text = (f"{base['place'] / count:.0%} / {base['shape'] / count:.0%} / {base['both'] / count:.0%}"
                     if base else "-")
        lines.append(f"| {case.shape} {case.position} | {case.module} | {count} | {got['place'] / count:.1%} | "
                     f"{got['shape'] / count:.1%} | {got['both'] / count:.1%} | {got['colour'] / count:.1%} | "
                     f"{base_text} |")
    first = outcome["results"][0]["controlnet"]
    bar = first["both"] / first["images"]
    lines += ["", f"The issue's bar (circle outline top left, object top left and read as a circle in >= 85% of "
              f"seeds): {bar:.1%} of {first['images']} images, {'met' if bar >= 0.85 else 'NOT met'}.", "",
              "Weight 0 against no ControlNet, pixel for pixel: "
              f"{'identical' if outcome['weight_0_exact'] else 'DIFFERENT'}.",
              "", f"Sample sheet `{sheet.name}`: per row the drawing, then two seeds of each colour pair."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controlnet", type=Path, default=DEFAULT_CONTROLNET)
    parser.add_argument("--seeds-per-prompt", type=int, default=7,
                        help="seeds per colour pair of the first case (the others get a quarter, at least 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without the ControlNet")
    parser.add_argument("--report", type=Path, default=DEFAULT_CONTROLNET.with_name(
        "shapes-demo-controlnet-report.md"))
    args = parser.parse_args(argv)
    outcome = evaluate(args.controlnet, args.seeds_per_prompt, not args.no_baseline)
    sheet = args.report.with_name(args.report.stem.replace("-report", "") + "-samples.png")
    save_sheet(outcome["sheet_rows"], sheet)
    write_report(outcome, args.report, args.controlnet, sheet)
    print(f"weight 0 exact: {outcome['weight_0_exact']}; wrote {args.report} and {sheet}")


if __name__ == "__main__":
    main()
