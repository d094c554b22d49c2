"""Overhead of our generation path over a bare diffusers pipeline call, for the same txt2img job.

What it measures: one txt2img job (same model, size, steps, sampler, seed, prompt, CFG) run two ways in one
process, on the CPU:

- ours: a `Txt2ImgRequest` through the whole path a user's job takes -- `services.jobs.run_and_wait` (queue,
  history database, worker thread), `Generator.generate` (validation, model lease, prompt parsing and encoding,
  per-job pipeline with its own scheduler, step callback with progress and live previews) and the output store
  (PNG with infotext written to the outputs folder);
- bare: `StableDiffusionPipeline(**components)` of the very same cached model, with the scheduler our request
  maps to (backend.core.samplers), called with the prompt strings, a seeded CPU generator and output_type="pil".

One warm-up of each, then `--runs` rounds alternating ours/bare, the order swapped every round (ours-bare,
bare-ours, ...) so drift in the machine's load and any first-or-second effect hit both sides alike; timed with
time.perf_counter (the verdict) and time.process_time (the CPU seconds of this process, all threads: less
disturbed when other programs compete for the CPUs). It prints each run, the median of each side, the median of
the per-round ratios ours/bare (wall clock and CPU), the load average, and PASS/FAIL for the wall-clock median
ratio against the target 1.03; on a busy machine (load average above the CPU count) it says the verdict is
unreliable. It also checks both give the same
pixels (max absolute difference of the 8-bit images): our path encodes prompts with its own code
(backend.prompts.encoding), so a difference of a few levels from float rounding may show; it is reported.

Default: the built-in demo model (hard-linked into a temporary models folder), 512x512, 10 steps, Euler: a step
takes about 1.4 s on a 2-core machine, long enough to measure (at 256x256, 0.15 s a step, the rounds on that
machine scattered by +-10%, more than the difference being measured). The exit code is 0 either way; read the
PASS/FAIL line.

Run (from the repository root):

    .venv/bin/python bench/overhead.py                      # 7 rounds
    .venv/bin/python bench/overhead.py --runs 3 --size 128 --steps 6   # quicker, noisier
    .venv/bin/python bench/overhead.py --json overhead.json # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download during a benchmark

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from backend.core.requests import Txt2ImgRequest  # noqa: E402
from backend.core.samplers import build_scheduler, resolve_sampler  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.models.builtin_model import builtin_checkpoint  # noqa: E402
from backend.services import build_services  # noqa: E402

TARGET_RATIO = 1.03
JOB_TIMEOUT_S = 600
PROMPT = "a red circle on a blue background"
NEGATIVE_PROMPT = "blurry"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds, each ours then bare (default 5)")
    parser.add_argument("--size", type=int, default=512, help="width and height in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (default 10)")
    parser.add_argument("--sampler", default="Euler", help="A1111 sampler name (default Euler)")
    parser.add_argument("--cfg-scale", type=float, default=7.0, help="CFG scale (default 7)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every run (default 1234)")
    parser.add_argument("--checkpoint", type=Path,
                        help="an SD1.x/SD2.x checkpoint file to use instead of the built-in demo model")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the two paths

def make_workdir(checkpoint: Path) -> Path:
    """A temporary models folder holding only `checkpoint` (hard-linked when possible: no copy)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    folder = workdir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    try:
        os.link(checkpoint, folder / checkpoint.name)
    except OSError:  # another file system
        shutil.copy2(checkpoint, folder / checkpoint.name)
    return workdir


def make_request(args: argparse.Namespace) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, sampler_name=args.sampler,
                          steps=args.steps, cfg_scale=args.cfg_scale, width=args.size, height=args.size,
                          seed=args.seed, save_images=True)


def run_ours(services, request: Txt2ImgRequest) -> tuple[float, float, Image.Image]:
    """Wall and CPU seconds from submitting the request to the finished job (image saved), and the image."""
    started, cpu_started = time.perf_counter(), time.process_time()
    job = services.jobs.run_and_wait(request, timeout=JOB_TIMEOUT_S)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if job.status != "done":
        raise SystemExit(f"our job ended {job.status}: {job.error}")
    image = job.result.images[0]
    if not image.path or not Path(image.path).is_file():
        raise SystemExit("our job did not save its image")
    return seconds, cpu_seconds, Image.open(io.BytesIO(image.png)).convert("RGB")


def bare_pipeline(services, request: Txt2ImgRequest) -> StableDiffusionPipeline:
    """A plain diffusers pipeline over the cached model's modules (no copy), with the scheduler our request
    maps to. Built once: a diffusers user builds the pipeline once and calls it many times."""
    with services.models.lease(request.checkpoint) as (_, model):
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        scheduler = build_scheduler(sampler, schedule, model.pipeline.scheduler.config)
        components = {**model.pipeline.components, "scheduler": scheduler}
        # No safety checker, as in the cached model: only silences diffusers' warning about it.
        pipeline = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_bare(pipeline: StableDiffusionPipeline, request: Txt2ImgRequest) -> tuple[float, float, Image.Image]:
    started, cpu_started = time.perf_counter(), time.process_time()
    output = pipeline(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      num_inference_steps=request.steps, guidance_scale=request.cfg_scale, width=request.width,
                      height=request.height, generator=torch.Generator("cpu").manual_seed(request.seed),
                      output_type="pil")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return seconds, cpu_seconds, output.images[0].convert("RGB")


def max_pixel_difference(first: Image.Image, second: Image.Image) -> int:
    a, b = (np.asarray(image, dtype=np.int16) for image in (first, second))
    if a.shape != b.shape:
        raise SystemExit(f"the two paths gave images of different shapes: {a.shape} and {b.shape}")
    return int(np.abs(a - b).max())


def worker_thread_count() -> int:
    """torch's intra-op threads as a newly started thread sees them (our jobs run on the queue's worker)."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


# ---------------------------------------------------------------- the run

def median_ratio(first: list[float], second: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(first, second))


def measure(services, args: argparse.Namespace) -> dict:
    request = make_request(args)
    print("loading the model and warming up both paths ...", flush=True)
    pipeline = bare_pipeline(services, request)
    *_, our_image = run_ours(services, request)
    *_, bare_image = run_bare(pipeline, request)
    difference = max_pixel_difference(our_image, bare_image)
    load_before = os.getloadavg()[0]
    ours, bare, ours_cpu, bare_cpu = [], [], [], []
    print(f"{'run':>4} {'ours s':>8} {'bare s':>8} {'ratio':>7} "
          f"{'ours cpu s':>11} {'bare cpu s':>11} {'cpu ratio':>10}")
    for run in range(1, args.runs + 1):
        if run % 2:
            ours_seconds, ours_cpu_seconds, _ = run_ours(services, request)
            bare_seconds, bare_cpu_seconds, _ = run_bare(pipeline, request)
        else:
            bare_seconds, bare_cpu_seconds, _ = run_bare(pipeline, request)
            ours_seconds, ours_cpu_seconds, _ = run_ours(services, request)
        ours.append(ours_seconds)
        bare.append(bare_seconds)
        ours_cpu.append(ours_cpu_seconds)
        bare_cpu.append(bare_cpu_seconds)
        print(f"{run:>4} {ours_seconds:>8.3f} {bare_seconds:>8.3f} {ours_seconds / bare_seconds:>7.3f} "
              f"{ours_cpu_seconds:>11.3f} {bare_cpu_seconds:>11.3f} {ours_cpu_seconds / bare_cpu_seconds:>10.3f}",
              flush=True)
    ratio = median_ratio(ours, bare)
    load = max(load_before, os.getloadavg()[0])
    return {
        "size": args.size, "steps": args.steps, "sampler": args.sampler, "cfg_scale": args.cfg_scale,
        "seed": args.seed, "runs": args.runs, "torch_threads": torch.get_num_threads(),
        "torch_threads_worker": worker_thread_count(), "cpu_count": os.cpu_count(), "load_average": round(load, 2),
        "ours_s": [round(v, 4) for v in ours], "bare_s": [round(v, 4) for v in bare],
        "ours_cpu_s": [round(v, 4) for v in ours_cpu], "bare_cpu_s": [round(v, 4) for v in bare_cpu],
        "ours_median_s": round(statistics.median(ours), 4), "bare_median_s": round(statistics.median(bare), 4),
        "median_ratio": round(ratio, 4),
        "ratio_of_medians": round(statistics.median(ours) / statistics.median(bare), 4),
        "median_extra_s": round(statistics.median(o - b for o, b in zip(ours, bare)), 4),
        "median_cpu_ratio": round(median_ratio(ours_cpu, bare_cpu), 4),
        "median_extra_cpu_s": round(statistics.median(o - b for o, b in zip(ours_cpu, bare_cpu)), 4),
        "max_pixel_difference": difference, "target_ratio": TARGET_RATIO, "passed": ratio <= TARGET_RATIO,
        "machine_busy": load > (os.cpu_count() or 1),
    }


def print_report(numbers: dict):
    print(f"\n{numbers['size']}x{numbers['size']}, {numbers['steps']} steps, {numbers['sampler']}, "
          f"CFG {numbers['cfg_scale']:g}; torch threads {numbers['torch_threads']} "
          f"(worker thread {numbers['torch_threads_worker']}), {numbers['cpu_count']} CPUs, "
          f"load average up to {numbers['load_average']}")
    print(f"{'path':<6} {'median s':>9} {'min s':>8} {'max s':>8} {'median cpu s':>13}")
    for side in ("ours", "bare"):
        values = numbers[f"{side}_s"]
        print(f"{side:<6} {numbers[f'{side}_median_s']:>9.3f} {min(values):>8.3f} {max(values):>8.3f} "
              f"{statistics.median(numbers[f'{side}_cpu_s']):>13.3f}")
    print(f"median ratio ours/bare {numbers['median_ratio']:.4f} (ratio of medians {numbers['ratio_of_medians']:.4f}); "
          f"median extra time of ours {1000 * numbers['median_extra_s']:.0f} ms per job")
    print(f"CPU time: median ratio ours/bare {numbers['median_cpu_ratio']:.4f}; "
          f"median extra CPU time of ours {1000 * numbers['median_extra_cpu_s']:.0f} ms per job")
    print(f"same pixels: max difference {numbers['max_pixel_difference']} of 255 between the two images")
    if numbers["machine_busy"]:
        print(f"note: the machine was busy (load average {numbers['load_average']} > {numbers['cpu_count']} CPUs): "
              "the wall-clock verdict below is unreliable; the CPU-time ratio is the steadier number")
    verdict = "PASS" if numbers["passed"] else "FAIL"
    print(f"{verdict}: median ratio {numbers['median_ratio']:.4f} (target <= {numbers['target_ratio']})")


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = make_workdir(args.checkpoint or builtin_checkpoint())
    services = build_services(Settings(models_dir=workdir / "models", outputs_dir=workdir / "outputs",
                                       cache_dir=workdir / "cache", device="cpu"))
    try:
        numbers = measure(services, args)
        print_report(numbers)
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    finally:
        services.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
