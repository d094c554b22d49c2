"""Score the built-in demo model: generate a fixed grid of captions x seeds, read each image back with the
deterministic detector of tools/shapes_world.py, and write a report.

    python -m tools.evaluate_demo_model [--checkpoint backend/models/builtin/shapes-demo.safetensors]
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from backend.core.samplers import build_scheduler
from backend.models.devices import choose_device
from backend.models.loader import CheckpointLoader
from tools.shapes_world import COLOURS, POSITIONS, SHAPES, SQUARE_BOX_FILL, Scene, ShapeSpec, describe, detect, render

DEFAULT_CHECKPOINT = Path("backend/models/builtin/shapes-demo.safetensors")
SEEDS = (1, 2)
STEPS, CFG, SAMPLER = 20, 7.0, "DPM++ 2M"


def caption_grid(count: int = 120) -> list[tuple[ShapeSpec, str, str]]:
    """Deterministic single-object captions covering every colour, shape, size, position and background."""
    colours, positions = list(COLOURS), [*POSITIONS, None]
    grid = []
    for i in range(count):
        colour = colours[i % len(colours)]
        background = colours[(i * 3 + 1 + i // len(colours)) % len(colours)]
        if background == colour:
            background = colours[(colours.index(colour) + 4) % len(colours)]
        spec = ShapeSpec(SHAPES[(i // 2) % len(SHAPES)], colour, ("small", None, "big")[i % 3],
                         positions[(i * 7) % len(positions)])
        grid.append((spec, background, describe(spec, background, random.Random(i))))
    return grid


def evaluate(checkpoint: Path, count: int = 120, sheet: Path | None = None, device: torch.device | str = "cpu"
             ) -> dict:
    model = CheckpointLoader().load(checkpoint, torch.float32)
    pipeline = model.pipeline.to(device)
    pipeline.scheduler = build_scheduler(SAMPLER, "Automatic", pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    tally, rows, images = Counter(), [], []
    for index, (spec, background, caption) in enumerate(caption_grid(count)):
        # The detector on a ground-truth drawing of the same caption: how far the scores can be trusted.
        truth = detect(render(Scene((spec,), background, caption), random.Random(index)))
        tally["truth shape"] += truth.shape == spec.shape
        tally["truth colour"] += truth.colour == spec.colour and truth.background == background
        tally["truth captions"] += 1
        for seed in SEEDS:
            image = pipeline(caption, num_inference_steps=STEPS, guidance_scale=CFG, width=64, height=64,
                             generator=torch.Generator().manual_seed(seed)).images[0]
            found = detect(image)
            tally["images"] += 1
            tally["colour"] += found.colour == spec.colour
            tally["background"] += found.background == background
            tally["shape"] += found.shape == spec.shape
            tally[f"shape {spec.shape}"] += 1
            tally[f"shape {spec.shape} correct"] += found.shape == spec.shape
            tally["square with straight sides"] += found.shape == spec.shape == "square" \
                and found.box_fill >= SQUARE_BOX_FILL
            if spec.position:
                tally["positioned"] += 1
                tally["position"] += found.position == spec.position
            rows.append((caption, seed, found))
            images.append(image)
    if sheet is not None:
        columns = 16
        grid = Image.new("RGB", (64 * columns, 64 * ((len(images) + columns - 1) // columns)))
        for index, image in enumerate(images):
            grid.paste(image, (64 * (index % columns), 64 * (index // columns)))
        grid.save(sheet)
    return {"tally": tally, "rows": rows,
            "scores": {"object colour": tally["colour"] / tally["images"],
                       "background colour": tally["background"] / tally["images"],
                       "shape": tally["shape"] / tally["images"],
                       "position (when stated)": tally["position"] / max(1, tally["positioned"])}}


def write_report(result: dict, path: Path, checkpoint: Path):
    tally, scores = result["tally"], result["scores"]
    lines = [
        "# Built-in demo model: evaluation", "",
        f"Checkpoint: `{checkpoint}`. Produced by `python -m tools.evaluate_demo_model`.", "",
        f"{tally['images'] // len(SEEDS)} captions x {len(SEEDS)} seeds = {tally['images']} images, 64x64, "
        f"{SAMPLER}, {STEPS} steps, CFG {CFG}; read back with the detector in `tools/shapes_world.py`.", "",
        "| measure | score | bar |", "| --- | --- | --- |",
    ]
    bars = {"object colour": 0.9, "background colour": 0.9, "shape": 0.7, "position (when stated)": 0.7}
    for name, value in scores.items():
        lines.append(f"| {name} | {value:.1%} | {bars[name]:.0%} |")
    lines += ["", f"The detector itself, on ground-truth drawings of the same {tally['truth captions']} captions: "
              f"shape {tally['truth shape'] / tally['truth captions']:.1%}, colours "
              f"{tally['truth colour'] / tally['truth captions']:.1%}."]
    lines += ["", "Shape by shape: " + ", ".join(
        f"{shape} {tally[f'shape {shape} correct']}/{tally[f'shape {shape}']}" for shape in SHAPES) + ". "
              f"Of the squares, {tally['square with straight sides']} fill at least {SQUARE_BOX_FILL:.0%} of their "
              "bounding box; the others have sides that bow in, and count because they fill its corners "
              "(a disc leaves them empty).", "",
              f"Sample sheet (every image, in grid order, {len(SEEDS)} seeds side by side): "
              f"`{path.with_name('shapes-demo-samples.png').name}`.", "",
              "| caption | seed | detected colour | background | shape | position |",
              "| --- | --- | --- | --- | --- | --- |"]
    for caption, seed, found in result["rows"]:
        lines.append(f"| {caption} | {seed} | {found.colour} | {found.background} | {found.shape} | {found.position} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--captions", type=int, default=120)
    parser.add_argument("--device", default="cpu", help="where to generate (the seeds' noise is drawn on the CPU)")
    parser.add_argument("--report", type=Path, default=Path("backend/models/builtin/shapes-demo-report.md"))
    args = parser.parse_args(argv)
    device = choose_device(args.device)  # a GPU that is not there fails at once, naming the option
    sheet = args.report.with_name("shapes-demo-samples.png")
    result = evaluate(args.checkpoint, args.captions, sheet, device)
    for name, value in result["scores"].items():
        print(f"{name}: {value:.1%}")
    write_report(result, args.report, args.checkpoint)


if __name__ == "__main__":
    main()
