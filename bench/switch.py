"""Model switching: cold load of model A, cold load of model B, then back to A from the cache.

What it measures: in one fresh process, with the model cache holding two checkpoints (max_models_in_memory=2,
CPU), the seconds `services.models.select(title)` takes for

1. A, cold (read from disk, build the pipeline; also the first load of this process, so one-time costs such as
   building the tokenizer are in it),
2. B, cold (another checkpoint of the same architecture and size),
3. A again: it must come from the cache, not from disk.

It prints each time and the ratio cached A / cold A (target: under 5 %; the ratio to cold B, which carries no
one-time costs, is shown too and must be under 5 % as well), and the process memory (RSS, psutil) before and
after each step plus the peak during it (sampled every few milliseconds) and the peak of the whole run
(getrusage). "No second copy of the weights": switching back to A may grow RSS by at most 10 % of A's weights,
A must be the very same objects as after its cold load (same parameter storage), and the cache must hold each
model exactly once.

Default models: A is the built-in demo model; B is a copy of it with every weight perturbed a little (written
with safetensors, same metadata, so same size and architecture but a different hash and different weights).
Both live in a temporary models folder that is removed at the end. `--model-a/--model-b` use other files.
The exit code is 0 either way; read the PASS/FAIL line.

Run (from the repository root):

    .venv/bin/python bench/switch.py
    .venv/bin/python bench/switch.py --model-a a.safetensors --model-b b.safetensors
    .venv/bin/python bench/switch.py --json switch.json     # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download during a benchmark

import psutil  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from backend.core.settings import Settings  # noqa: E402
from backend.models.builtin_model import builtin_checkpoint  # noqa: E402
from backend.services import build_services  # noqa: E402

TARGET_RATIO = 0.05
SECOND_COPY_FRACTION = 0.10  # RSS growth on switching back above this share of A's weights counts as a copy
MEMORY_SAMPLE_INTERVAL_S = 0.005
PERTURBATION = 1e-3  # relative noise that makes model B: different weights, same shapes and file size
MB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-a", type=Path, help="checkpoint A (default: the built-in demo model)")
    parser.add_argument("--model-b", type=Path,
                        help="checkpoint B (default: a perturbed copy of A, written to a temporary folder)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the two checkpoints

def link_or_copy(source: Path, target: Path):
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def write_perturbed_copy(source: Path, target: Path):
    """Every floating-point tensor of `source` times (1 + small noise), same dtypes and metadata: a checkpoint of
    the same architecture and size whose weights (and hash) differ."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    with safe_open(str(source), framework="pt") as reader:
        metadata = dict(sorted((reader.metadata() or {}).items()))  # a fixed order: the same file every run
        for key in reader.keys():  # noqa: SIM118 (safetensors' reader is not a dict)
            tensor = reader.get_tensor(key)
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * PERTURBATION
                tensor = (tensor.float() * (1 + noise)).to(tensor.dtype)
            tensors[key] = tensor
    save_file(tensors, str(target), metadata=metadata)


def make_models_folder(workdir: Path, model_a: Path, model_b: Path | None) -> tuple[Path, str, str]:
    """The temporary models folder and the file names of A and B in it."""
    folder = workdir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    name_a = "A-" + model_a.name
    link_or_copy(model_a, folder / name_a)
    if model_b is None:
        name_b = "B-perturbed-" + model_a.stem + ".safetensors"
        write_perturbed_copy(model_a, folder / name_b)
    else:
        name_b = "B-" + model_b.name
        link_or_copy(model_b, folder / name_b)
    return workdir / "models", name_a, name_b


# ---------------------------------------------------------------- memory

def rss() -> int:
    return psutil.Process().memory_info().rss


class PeakRss(threading.Thread):
    """The highest RSS of this process while a step runs (a transient copy during a load shows up here)."""

    def __init__(self):
        super().__init__(name="rss-sampler", daemon=True)
        self.peak = rss()
        self._stop_event = threading.Event()

    def run(self):
        process = psutil.Process()
        while not self._stop_event.wait(MEMORY_SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss())


def lifetime_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


# ---------------------------------------------------------------- the steps

def timed_select(services, name: str) -> dict:
    """select() as the UI and the API's options call do it, timed, with the memory around it."""
    gc.collect()  # garbage from the previous step must not be counted against this one
    before = rss()
    sampler = PeakRss()
    sampler.start()
    started = time.perf_counter()
    entry = services.models.select(name)
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    gc.collect()
    return {"title": entry.title, "seconds": seconds, "rss_before": before, "rss_after": rss(), "rss_peak": peak}


def model_identity(services, name: str) -> tuple[int, int, int]:
    """(id of the loaded model, data pointer of its first UNet weight, its size in bytes): equal identities mean
    the very same weights in memory. A lease of a cached model loads nothing."""
    with services.models.lease(name) as (_, model):
        first_weight = next(model.pipeline.unet.parameters())
        return id(model), first_weight.data_ptr(), model.size_bytes


def measure(services, name_a: str, name_b: str) -> dict:
    loads_before = services.models.stats.loads
    rss_start = rss()
    print("cold A ...", flush=True)
    cold_a = timed_select(services, name_a)
    identity_a = model_identity(services, name_a)
    print("cold B ...", flush=True)
    cold_b = timed_select(services, name_b)
    identity_b = model_identity(services, name_b)
    print("back to A (cached) ...", flush=True)
    cached_a = timed_select(services, name_a)
    identity_a_again = model_identity(services, name_a)
    loads = services.models.stats.loads - loads_before
    cached_titles = services.models.cached_titles()
    size_a, size_b = identity_a[2], identity_b[2]
    growth_back = cached_a["rss_after"] - cached_a["rss_before"]
    ratio_a = cached_a["seconds"] / cold_a["seconds"]
    ratio_b = cached_a["seconds"] / cold_b["seconds"]
    same_weights = identity_a_again[:2] == identity_a[:2]
    each_once = sorted(cached_titles) == sorted({cold_a["title"], cold_b["title"]}) and len(cached_titles) == 2
    no_second_copy = same_weights and each_once and loads == 2 and growth_back <= SECOND_COPY_FRACTION * size_a
    return {
        "steps": {"cold A": cold_a, "cold B": cold_b, "cached A": cached_a},
        "model_a": cold_a["title"], "model_b": cold_b["title"], "size_a_bytes": size_a, "size_b_bytes": size_b,
        "ratio_cached_to_cold_a": ratio_a, "ratio_cached_to_cold_b": ratio_b,
        "rss_start": rss_start, "rss_end": rss(), "rss_growth_back_to_a": growth_back,
        # kernel counters and sampled values may differ by a page or two: the higher one is the peak
        "rss_lifetime_peak": max(lifetime_peak_rss(), *(step["rss_peak"] for step in (cold_a, cold_b, cached_a))),
        "loads_from_disk": loads, "cached_titles": cached_titles,
        "same_weights_after_switch": same_weights, "cache_holds_each_once": each_once,
        "no_second_copy": no_second_copy, "target_ratio": TARGET_RATIO,
        "passed": max(ratio_a, ratio_b) < TARGET_RATIO and no_second_copy,
    }


def mb(value: int) -> str:
    return f"{value / MB:.1f}"


def print_report(numbers: dict):
    print(f"\nA = {numbers['model_a']} ({mb(numbers['size_a_bytes'])} MB of weights loaded)")
    print(f"B = {numbers['model_b']} ({mb(numbers['size_b_bytes'])} MB of weights loaded)")
    print(f"{'step':<9} {'seconds':>9} {'RSS before MB':>14} {'after MB':>9} {'peak MB':>8} {'growth MB':>10} "
          f"{'peak-before MB':>15}")
    for name, step in numbers["steps"].items():
        print(f"{name:<9} {step['seconds']:>9.4f} {mb(step['rss_before']):>14} {mb(step['rss_after']):>9} "
              f"{mb(step['rss_peak']):>8} {mb(step['rss_after'] - step['rss_before']):>10} "
              f"{mb(step['rss_peak'] - step['rss_before']):>15}")
    print(f"ratio cached A / cold A {numbers['ratio_cached_to_cold_a']:.5f} "
          f"({100 * numbers['ratio_cached_to_cold_a']:.3f} %); "
          f"cached A / cold B {numbers['ratio_cached_to_cold_b']:.5f}")
    print(f"RSS start {mb(numbers['rss_start'])} MB, end {mb(numbers['rss_end'])} MB, peak of the run "
          f"{mb(numbers['rss_lifetime_peak'])} MB; growth on switching back to A "
          f"{mb(numbers['rss_growth_back_to_a'])} MB (limit {100 * SECOND_COPY_FRACTION:g} % of A = "
          f"{mb(SECOND_COPY_FRACTION * numbers['size_a_bytes'])} MB)")
    print(f"loads from disk {numbers['loads_from_disk']} (expected 2); cache holds {numbers['cached_titles']}; "
          f"A after the switch is the same weights in memory: {numbers['same_weights_after_switch']}")
    verdict = "PASS" if numbers["passed"] else "FAIL"
    worst = max(numbers["ratio_cached_to_cold_a"], numbers["ratio_cached_to_cold_b"])
    print(f"{verdict}: cached/cold {100 * worst:.3f} % (target < {100 * numbers['target_ratio']:g} %), "
          f"no second copy of the weights: {numbers['no_second_copy']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    try:
        models_dir, name_a, name_b = make_models_folder(workdir, args.model_a or builtin_checkpoint(), args.model_b)
        services = build_services(Settings(models_dir=models_dir, outputs_dir=workdir / "outputs",
                                           cache_dir=workdir / "cache", device="cpu", max_models_in_memory=2))
        try:
            numbers = measure(services, name_a, name_b)
        finally:
            services.close()
        print_report(numbers)
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
