"""GPU speed: it/s of plain diffusers and of our generation path with each speed option, for SD1.5 and SDXL;
plain diffusers against ours for Flux.1 (bf16 and fp8) and SD3.5 medium.

What it measures, per model (SD1.5 at 512x512, SDXL at 1024x1024; batch 1, CFG 7, `--steps` steps, fp16 on CUDA):

- the models are the full-size architectures built from the bundled configs (backend/models/configs) with random
  weights (speed does not depend on weight values), written as ONE single-file checkpoint in the original SD key
  layout (backend.models.original_layout, as tools.tiny_models does) in a temporary models folder, so our path loads
  it through the real loader (services -> ModelManager -> Generator);
- plain diffusers: StableDiffusionPipeline / StableDiffusionXLPipeline over the very same loaded modules, with
  the scheduler our request maps to (`--sampler`, default Euler), called with the prompt, a seeded generator,
  guidance_scale 7 and output_type="pil" (decode included);
- ours: `Generator.generate(Txt2ImgRequest)`, the call the job queue's worker makes (called directly, so the step
  timestamps can be taken; bench/overhead.py measures the queue around it), for these variants:
    default            Settings() as shipped: PyTorch SDPA, live preview every 5 steps (the cheap latent->RGB one)
    no previews        the same generator with live previews off (the live_previews_enable option)
    TAESD previews     a randomly initialised AutoencoderTiny (diffusers' TAESD architecture) rendering a live
                       preview after every step (show_progress_every_n_steps=1) through
                       backend.generation.previews.PreviewRenderer
    channels_last      the loaded UNet in channels_last memory format          } applied to the cached model
    fused QKV          pipeline.fuse_qkv_projections() (UNet and VAE)          } through services.models.lease;
    channels_last + fused QKV                                                  } on CUDA --compile does both
    --compile          a fresh Settings(compile_unet=True): torch.compile of the UNet (on CUDA also channels_last and
                       fused QKV) with the persistent compile cache; "warm-up s" is its compile time, and the note
                       says whether the cache was warm and which folder inductor really used
- the UNet alone (batch 2 = CFG, fixed inputs, no scheduler/text encoders/VAE): eager, and torch.compile
  mode="reduce-overhead" (inductor + CUDA graphs; CUDA only, n/a on the CPU);
- VAE decode at twice the model's size (SD1.5 1024x1024, SDXL 2048x2048: below the VAE's own tile size tiling
  changes nothing), whole and tiled (backend.models.speed_options.vae_tiling, the switch that Settings(vae_tiling=
  "always"/"never") turns), with peak memory; SDXL's VAE upcast to fp32 as the SDXL pipeline does;
- the cost of one live preview: the cheap approximation and TAESD.

Flow models (`--models flux,flux-fp8,sd35`; 1024x1024, batch 1, bf16 on CUDA): the full-size architectures from the
bundled configs (FLUX.1 dev: 12B transformer with the guidance embedding, CLIP-L, T5-XXL, the 16-channel VAE;
SD3.5 medium: the SD3 config with MMDiT-X dual attention in blocks 0-12, CLIP-L, CLIP-G, T5-XXL), text encoders at
full size, random weights written as single files in the published layouts so ours loads them through the real
loader: Flux in BFL's layout (flux1-dev.safetensors in Stable-diffusion, ae.safetensors in VAE, clip_l / t5xxl in
text_encoder), for flux-fp8 the transformer's matrices stored as float8_e4m3fn (kept in fp8, computed in bf16);
SD3.5 as Stability's all-in-one file (model.diffusion_model.*, first_stage_model.*, text_encoders.*). The T5
tokenizer is the tiny offline one from tools.tiny_flow_models (T5 pads to its fixed length, so the token values
do not change the cost). Rows: plain diffusers (FluxPipeline / StableDiffusion3Pipeline over the very same loaded
modules, the scheduler our request maps to), ours default and ours without previews; Flux at CFG 1 with Distilled
CFG 3.5 (one transformer pass a step, as Forge), SD3.5 at CFG 4.5 with the negative prompt. The UNet-only variants
(TAESD, channels_last, fused QKV, --compile, UNet alone, VAE tiling, preview cost) do not apply to them.
Peak VRAM includes the weights (Flux bf16 needs about 34 GB; writing its files needs about 35 GB of disk).

How it/s is measured: the pipeline's step callback takes a timestamp at the end of every step (for ours through
the JobProgress the Generator updates each step), after torch.cuda.synchronize() on CUDA (done the same way for
plain diffusers and ours); it/s = (steps - 1) / (last stamp - first stamp), i.e. the denoising loop alone, without
prompt encoding, the first step and the decode. "job s" is the whole call; "decode s" is the time after the last
step (VAE decode, to PIL, PNG with infotext for ours). Each variant runs once to warm up and then `--runs` times;
the table shows medians. "warm-up s" = first run minus the median run (for --compile: the compile). Peak memory
is torch.cuda.max_memory_allocated over the variant's runs on CUDA (weights included), the process's peak RSS
(sampled every 5 ms) on the CPU.

Targets (on a GPU): the fastest mode a user can choose (default or --compile) at least 1.5x plain diffusers; the
default mode no slower than plain diffusers (>= 0.97x, for noise). Published anchors on an H100, SD1.5: diffusers
54.5 it/s, stable-fast 104.6 it/s; SDXL: 14.9 and 21.6 it/s. The whole run is meant to take under 5 minutes on an
H100 once the compile cache is warm (the first --compile on a machine compiles from scratch; `--skip compile`).

`--tiny`: the tiny test architectures (tools.tiny_models) on the CPU in fp32 at 64x64 (SD1.5) and 128x128
(SDXL), 8 steps, one torch thread (`--threads`): checks that the script and every code path except the CUDA-only
ones work on a machine without a GPU (about 40 s on 2 cores with a warm compile cache, 2-3 minutes cold). Its
numbers say nothing about GPU speed and its PASS/FAIL lines are marked not meaningful.

The exit code is 1 when a variant failed with an error (shown in its row), 0 otherwise; read the PASS/FAIL lines.

Run (from the repository root):

    .venv/bin/python bench/gpu.py                          # GPU: SD1.5 and SDXL, 20 steps, 3 runs
    .venv/bin/python bench/gpu.py --models sd15 --json gpu.json
    .venv/bin/python bench/gpu.py --skip compile,cudagraphs   # no compiling at all
    .venv/bin/python bench/gpu.py --tiny                   # CPU check of the script itself
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download during a benchmark

import diffusers  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoencoderTiny,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from backend.core.requests import Txt2ImgRequest  # noqa: E402
from backend.core.samplers import build_scheduler, resolve_sampler  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.generation.previews import PreviewRenderer, cheap_preview  # noqa: E402
from backend.jobs.queue import JobProgress  # noqa: E402
from backend.models.detection import base_config  # noqa: E402
from backend.models.speed_options import vae_tiling  # noqa: E402
from backend.services import build_services  # noqa: E402
from tools.tiny_models import to_original_state_dict, write_tiny_checkpoint  # noqa: E402

FASTEST_TARGET = 1.5  # fastest offered mode / plain diffusers
DEFAULT_TARGET = 0.97  # default mode / plain diffusers ("no slower", with a little room for noise)
TIME_BUDGET_S = 300
PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE_PROMPT = "blurry"
GIB = 2**30
SKIPPABLE = ("default", "no-previews", "taesd", "channels-last", "fused-qkv", "cl-fused", "compile", "unet",
             "cudagraphs", "vae", "previews")


@dataclass(frozen=True)
class ModelSpec:
    key: str  # --models name
    family: str  # backend family
    label: str
    size: int  # full-size benchmark resolution
    tiny_size: int
    anchors: tuple[float, float] | None  # published H100 it/s: diffusers, stable-fast
    storage: str | None = None  # flow models: "fp8" stores the transformer's matrices in float8_e4m3fn

    @property
    def flow(self) -> bool:
        return self.family in ("flux", "sd3")


MODELS = {
    "sd15": ModelSpec("sd15", "sd1", "SD1.5", 512, 64, (54.5, 104.6)),
    "sdxl": ModelSpec("sdxl", "sdxl", "SDXL", 1024, 128, (14.9, 21.6)),
    "flux": ModelSpec("flux", "flux", "Flux.1 dev bf16", 1024, 64, None),
    "flux-fp8": ModelSpec("flux-fp8", "flux", "Flux.1 dev fp8", 1024, 64, None, storage="fp8"),
    "sd35": ModelSpec("sd35", "sd3", "SD3.5 medium", 1024, 64, None),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="sd15,sdxl",
                        help="comma-separated: sd15, sdxl, flux, flux-fp8, sd35 (default sd15,sdxl)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 20; 8 with --tiny)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant after one warm-up (default 3)")
    parser.add_argument("--sampler", default="Euler", help="A1111 sampler name, for both paths (default Euler)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every run (default 1234)")
    parser.add_argument("--tiny", action="store_true", help="tiny test models, small sizes, CPU: checks the script")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda for full size, cpu with --tiny (default auto)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: 1 for a CPU run, where two OpenMP threads on a busy 2-core "
                             "machine stall each other and the numbers swing tenfold; torch's default on CUDA)")
    parser.add_argument("--skip", default="", help=f"comma-separated variants to leave out: {', '.join(SKIPPABLE)}")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "bench-gpu",
                        help="kept between runs: the torch.compile cache (<dir>/torch-compile) and file hashes "
                             "(default cache/bench-gpu in the repository)")
    parser.add_argument("--workdir", type=Path, help="where the temporary checkpoints go (default: system temp)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.model_keys = [key.strip() for key in args.models.split(",") if key.strip()]
    unknown = [key for key in args.model_keys if key not in MODELS]
    if unknown or not args.model_keys:
        parser.error(f"--models: choose from {', '.join(MODELS)}; got {args.models!r}")
    args.skipped = {name.strip() for name in args.skip.split(",") if name.strip()}
    if args.skipped - set(SKIPPABLE):
        parser.error(f"--skip: unknown {', '.join(sorted(args.skipped - set(SKIPPABLE)))}; "
                     f"choose from {', '.join(SKIPPABLE)}")
    if args.steps is None:
        args.steps = 8 if args.tiny else 20
    if args.steps < 3 or args.runs < 1:
        parser.error("--steps must be at least 3 and --runs at least 1")
    if args.device == "auto":
        args.device = "cpu" if args.tiny else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: the full-size benchmark needs one (use --tiny to check the script on the CPU)")
    if args.device == "cpu" and not args.tiny:
        parser.error("full-size models on the CPU would take hours: use --tiny (or --device cuda)")
    return args


# ---------------------------------------------------------------- measuring

def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory inside the block: allocated CUDA memory, or the process's RSS (sampled) on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            process = psutil.Process()
            self.peak = process.memory_info().rss

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return False


@dataclass
class Run:
    total_s: float
    stamps: list[float]  # end of each denoising step
    end: float

    @property
    def its(self) -> float | None:
        if len(self.stamps) < 2 or self.stamps[-1] <= self.stamps[0]:
            return None
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])

    @property
    def tail_s(self) -> float | None:
        return self.end - self.stamps[-1] if self.stamps else None


@dataclass
class Row:
    model: str
    variant: str
    kind: str  # "plain" | "ours" | "unet"
    offered_mode: bool = False  # a mode a user can choose (counts for the targets)
    its: float | None = None
    job_s: float | None = None
    decode_s: float | None = None
    warmup_s: float | None = None
    peak_bytes: int | None = None
    note: str = ""
    error: str | None = None
    runs_its: list[float] = field(default_factory=list)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure_runs(row: Row, device: torch.device, runs: int, run_once) -> Row:
    """One warm-up run, then `runs` timed runs of `run_once() -> Run`; medians into `row`."""
    with PeakMemory(device) as memory:
        first = run_once()
        timed = [run_once() for _ in range(runs)]
    row.runs_its = [round(r.its, 3) for r in timed if r.its is not None]
    row.its = median([r.its for r in timed])
    row.job_s = median([r.total_s for r in timed])
    row.decode_s = median([r.tail_s for r in timed])
    row.warmup_s = first.total_s - row.job_s
    row.peak_bytes = memory.peak
    return row


def error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def guarded(rows: list[Row], row: Row, action):
    """Run `action(row)`; an exception becomes the row's error (the other variants still run)."""
    started = time.perf_counter()
    print(f"  {row.variant} ...", end="", flush=True)
    try:
        action(row)
    except Exception as error:  # a failing variant is reported in the table, not fatal
        row.error = error_text(error)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows.append(row)
    print(f" {time.perf_counter() - started:.1f}s" + (f"  ERROR {row.error}" if row.error else ""), flush=True)
    return row


# ---------------------------------------------------------------- the two paths

def run_plain(pipeline, request: Txt2ImgRequest, device: torch.device) -> Run:
    stamps: list[float] = []

    def on_step(pipe, step, timestep, tensors):
        synchronize(device)
        stamps.append(time.perf_counter())
        return tensors

    synchronize(device)
    started = time.perf_counter()
    output = pipeline(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      num_inference_steps=request.steps, guidance_scale=request.cfg_scale, width=request.width,
                      height=request.height, generator=torch.Generator("cpu").manual_seed(request.seed),
                      output_type="pil", callback_on_step_end=on_step)
    synchronize(device)
    end = time.perf_counter()
    if len(output.images) != 1 or len(stamps) != request.steps:
        raise RuntimeError(f"plain diffusers gave {len(output.images)} images and {len(stamps)} steps")
    return Run(end - started, stamps, end)


@dataclass
class TimedProgress(JobProgress):
    """The Generator sets `progress.step` at the end of every step: take a timestamp there (it sets the last step
    again after the decode, which is not a step)."""
    device: torch.device | None = None
    stamps: list[float] = field(default_factory=list)

    def __setattr__(self, name, value):
        if name == "step" and value and self.device is not None and value != getattr(self, "step", None):
            synchronize(self.device)
            self.stamps.append(time.perf_counter())
        super().__setattr__(name, value)


def without_previews(generator):
    """The same generator with live previews off (A1111's option), whatever the user options say."""
    options = generator.options
    return dataclasses.replace(generator, options=lambda: options().model_copy(update={"live_previews_enable": False}))


def every_step_previews(generator, previews: PreviewRenderer):
    """The same generator rendering a live preview with `previews` after every step."""
    options = generator.options
    return dataclasses.replace(generator, previews=previews, options=lambda: options().model_copy(
        update={"live_previews_enable": True, "show_progress_every_n_steps": 1}))


def run_ours(generator, request: Txt2ImgRequest, device: torch.device) -> Run:
    progress = TimedProgress(device=device)
    synchronize(device)
    started = time.perf_counter()
    result = generator.generate(request, progress)
    synchronize(device)
    end = time.perf_counter()
    if result.interrupted or len(result.images) != 1 or len(progress.stamps) != request.steps:
        raise RuntimeError(f"our job gave {len(result.images)} images and {len(progress.stamps)} steps")
    return Run(end - started, progress.stamps, end)


def plain_pipeline(services, request: Txt2ImgRequest):
    """A plain diffusers pipeline over the cached model's modules (no copy), with the scheduler our request maps to."""
    with services.models.lease(request.checkpoint) as (_, model):
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        scheduler = build_scheduler(sampler, schedule, model.pipeline.scheduler.config)
        components = {**model.pipeline.components, "scheduler": scheduler}
        if model.family == "sdxl":
            pipeline = StableDiffusionXLPipeline(**components)
        else:
            pipeline = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ---------------------------------------------------------------- models on disk

def write_full_checkpoint(path: Path, family: str, device: torch.device, dtype: torch.dtype) -> Path:
    """The full-size architecture of `family` from the bundled configs, random weights, one original-layout file."""
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes
        components = {
            "unet": UNet2DConditionModel.from_config(base_config(family, "unet")),
            "vae": AutoencoderKL.from_config(base_config(family, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(base_config(family, "text_encoder"))),
        }
        if family == "sdxl":
            components["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(base_config(family, "text_encoder_2")))
    state = {key: value.detach().to("cpu", dtype, copy=True).contiguous()
             for key, value in to_original_state_dict(family, components).items()}
    del components
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_taesd(folder: Path):
    """Randomly initialised TAESD decoders (diffusers' AutoencoderTiny) where PreviewRenderer looks for them."""
    torch.manual_seed(0)
    model = AutoencoderTiny()
    for name in ("taesd", "taesdxl"):
        model.save_pretrained(str(folder / name))


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- per model

def unet_inputs(unet, size: int, device: torch.device, dtype: torch.dtype) -> dict:
    """What the pipeline passes the UNet at one CFG step of batch 1 (so batch 2)."""
    config = unet.config
    generator = torch.Generator("cpu").manual_seed(0)
    latent = size // 8

    def noise(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    inputs = {"sample": noise(2, config.in_channels, latent, latent),
              "timestep": torch.tensor(500.0, device=device),
              "encoder_hidden_states": noise(2, 77, config.cross_attention_dim)}
    if config.addition_embed_type == "text_time":
        time_dim = config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": noise(2, config.projection_class_embeddings_input_dim - 6 * time_dim),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype)}
    return inputs


def measure_unet(row: Row, unet, inputs: dict, steps: int, runs: int, device: torch.device, cuda_graphs: bool):
    """`steps` UNet calls in a row = one run; it/s = steps / run time."""
    def run_once() -> Run:
        synchronize(device)
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs may be overwritten
                unet(**inputs, return_dict=False)
        synchronize(device)
        end = time.perf_counter()
        return Run(end - started, [started + (end - started) * i / steps for i in range(steps + 1)], end)

    measure_runs(row, device, runs, run_once)
    row.decode_s = None


def bench_vae(model, size: int, runs: int, device: torch.device) -> dict:
    """Decode one latent of `size` pixels whole and tiled, as the pipelines do (SDXL's VAE upcast to fp32)."""
    vae = model.pipeline.vae
    # only the SDXL pipelines honour force_upcast (decode in fp32); SD1.x decodes in the model's dtype
    upcast = model.family.startswith("sdxl") and vae.dtype == torch.float16 and vae.config.force_upcast
    original_dtype = vae.dtype
    if upcast:
        vae.to(torch.float32)
    latent = torch.randn(1, vae.config.latent_channels, size // 8, size // 8,
                         generator=torch.Generator("cpu").manual_seed(0)).to(device, vae.dtype)
    result = {"size": size, "upcast_fp32": upcast}
    try:
        for tiled in (False, True):
            with vae_tiling(vae, tiled) as active, PeakMemory(device) as memory, torch.no_grad():
                times = []
                for index in range(runs + 1):
                    synchronize(device)
                    started = time.perf_counter()
                    vae.decode(latent / vae.config.scaling_factor, return_dict=False)
                    synchronize(device)
                    if index:  # the first decode warms up
                        times.append(time.perf_counter() - started)
            name = "tiled" if tiled else "whole"
            result[f"{name}_s"] = statistics.median(times)
            result[f"{name}_peak_bytes"] = memory.peak
            result[f"{name}_active"] = bool(active)
    finally:
        if upcast:
            vae.to(original_dtype)
    return result


def bench_previews(family: str, taesd_root: Path, size: int, device: torch.device, dtype: torch.dtype) -> dict:
    latent = torch.randn(4, size // 8, size // 8, generator=torch.Generator("cpu").manual_seed(0)).to(device, dtype)
    renderer = PreviewRenderer(taesd_root, device, dtype)
    if renderer._taesd(family) is None:
        raise RuntimeError(f"the TAESD decoder in {taesd_root} did not load")

    def per_call(action, count=10) -> float:
        action()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(count):
            action()
        synchronize(device)
        return (time.perf_counter() - started) / count

    return {"cheap_ms": per_call(lambda: cheap_preview(latent, family)) * 1000,
            "taesd_ms": per_call(lambda: renderer.render(latent, family)) * 1000}


def inductor_cache_dir() -> str:
    """The folder torch inductor keeps compiled kernels in (TORCHINDUCTOR_CACHE_DIR, or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@dataclass
class ModelRun:
    """What the variants of one model share."""
    spec: ModelSpec
    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    folder: Path  # models/, outputs/ and the TAESD folder of this model
    request: Txt2ImgRequest
    rows: list[Row] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.request.width

    @property
    def taesd_root(self) -> Path:  # not models/VAE-approx: the default variant keeps the cheap preview
        return self.folder / "taesd-approx"

    def skipped(self, name: str) -> bool:
        return name in self.args.skipped

    def settings(self, **options) -> Settings:
        return Settings(models_dir=self.folder / "models", outputs_dir=self.folder / "outputs",
                        cache_dir=self.args.cache_dir, device=self.device.type, offline=True,
                        max_models_in_memory=1, **options)

    def row(self, variant: str, kind: str, offered: bool = False) -> Row:
        return Row(model=self.spec.label, variant=variant, kind=kind, offered_mode=offered)

    def measure(self, row: Row, run_once) -> Row:
        return measure_runs(row, self.device, self.args.runs, run_once)


def bench_model(spec: ModelSpec, args, device: torch.device, dtype: torch.dtype, workdir: Path) -> dict:
    if spec.flow:
        return bench_flow_model(spec, args, device, flow_dtype(device), workdir)
    size = spec.tiny_size if args.tiny else spec.size
    folder = workdir / spec.key
    checkpoint = folder / "models" / "Stable-diffusion" / f"bench-{spec.key}.safetensors"
    print(f"\n{spec.label}: writing a {'tiny' if args.tiny else 'full-size'} checkpoint with random weights ...",
          flush=True)
    started = time.perf_counter()
    if args.tiny:
        write_tiny_checkpoint(checkpoint, spec.family)
    else:
        write_full_checkpoint(checkpoint, spec.family, device, dtype)
    write_s = time.perf_counter() - started
    print(f"  {checkpoint.stat().st_size / GIB:.2f} GiB in {write_s:.1f}s", flush=True)
    request = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, sampler_name=args.sampler,
                             steps=args.steps, cfg_scale=7.0, width=size, height=size, seed=args.seed,
                             save_images=False)
    run = ModelRun(spec, args, device, dtype, folder, request,
                   extra={"size": size, "checkpoint_bytes": checkpoint.stat().st_size, "write_s": round(write_s, 2)})
    write_taesd(run.taesd_root)
    unet_alive = phase_default_settings(run)
    free_memory()
    if unet_alive() is not None:  # something still holds the first services' model: later peaks would include it
        print("  warning: the first model is still referenced; the --compile row's peak memory includes it",
              flush=True)
    if not run.skipped("compile"):
        phase_compile(run)
        free_memory()
    checkpoint.unlink(missing_ok=True)
    return {"model": spec.label, "key": spec.key, **run.extra, "rows": run.rows}


def phase_default_settings(run: ModelRun):
    """One services with the default Settings: plain diffusers over its loaded modules, our default path, and
    the variants that only change the cached model (through a lease). Returns a weak reference to the UNet."""
    device, dtype, request, rows = run.device, run.dtype, run.request, run.rows
    services = build_services(run.settings())
    try:
        title = services.models.list_checkpoints()[0].title
        started = time.perf_counter()
        services.models.select(title)
        run.extra["load_s"] = round(time.perf_counter() - started, 2)
        print(f"  loaded through our loader in {run.extra['load_s']:.1f}s ({services.models.runtime_status})",
              flush=True)
        with services.models.lease(None) as (_, model):
            unet_alive = weakref.ref(model.pipeline.unet)
        generator = services.generator
        plain = plain_pipeline(services, request)
        guarded(rows, run.row("plain diffusers", "plain"),
                lambda row: run.measure(row, lambda: run_plain(plain, request, device)))
        if not run.skipped("default"):
            guarded(rows, run.row("ours: default", "ours", offered=True),
                    lambda row: run.measure(row, lambda: run_ours(generator, request, device)))
        if not run.skipped("no-previews"):
            quiet = without_previews(generator)
            guarded(rows, run.row("ours: no previews", "ours", offered=True),
                    lambda row: run.measure(row, lambda: run_ours(quiet, request, device)))
        if not run.skipped("taesd"):
            taesd = every_step_previews(generator, PreviewRenderer(run.taesd_root, device, dtype))

            def taesd_variant(row: Row):
                run.measure(row, lambda: run_ours(taesd, request, device))
                if taesd.previews._taesd(run.spec.family) is None:
                    raise RuntimeError("the TAESD decoder did not load: the cheap preview ran instead")
            guarded(rows, run.row("ours: TAESD preview every step", "ours", offered=True), taesd_variant)
        if not run.skipped("previews"):
            try:
                run.extra["previews"] = bench_previews(run.spec.family, run.taesd_root, run.size, device, dtype)
            except Exception as error:
                run.extra["previews"] = {"error": error_text(error)}
        if not run.skipped("vae"):
            print(f"  VAE decode at {run.size * 2}x{run.size * 2}, whole and tiled ...", flush=True)
            try:
                with services.models.lease(None) as (_, model):
                    run.extra["vae"] = bench_vae(model, run.size * 2, run.args.runs, device)
            except Exception as error:
                run.extra["vae"] = {"size": run.size * 2, "error": error_text(error)}
            free_memory()
        if not run.skipped("unet") or not run.skipped("cudagraphs"):
            bench_unet_alone(run, services)
        for key, variant, channels_last, fused in (("channels-last", "ours: channels_last", True, False),
                                                   ("fused-qkv", "ours: fused QKV", False, True),
                                                   ("cl-fused", "ours: channels_last + fused QKV", True, True)):
            if not run.skipped(key):
                guarded(rows, run.row(variant, "ours"),
                        lambda row, cl=channels_last, fq=fused: cached_model_variant(run, services, row, cl, fq))
    finally:
        services.close()
    return unet_alive


def bench_unet_alone(run: ModelRun, services):
    """The UNet of the cached model called `steps` times in a row: eager, and with CUDA graphs."""
    with services.models.lease(None) as (_, model):
        unet = model.pipeline.unet
    inputs = unet_inputs(unet, run.size, run.device, run.dtype)
    steps, runs, device = run.args.steps, run.args.runs, run.device
    if not run.skipped("unet"):
        guarded(run.rows, run.row("UNet alone: eager", "unet"),
                lambda row: measure_unet(row, unet, inputs, steps, runs, device, False))
    if run.skipped("cudagraphs"):
        return
    row = run.row("UNet alone: CUDA graphs (reduce-overhead)", "unet")
    if device.type != "cuda":
        row.note = "n/a: needs CUDA"
        run.rows.append(row)
        return

    def cuda_graphs(row: Row):
        from torch._dynamo.utils import counters

        skips_before = counters["inductor"]["cudagraph_skips"]
        compiled = torch.compile(unet, mode="reduce-overhead", dynamic=False)
        try:
            measure_unet(row, compiled, inputs, steps, runs, device, True)
            skipped = counters["inductor"]["cudagraph_skips"] - skips_before
            row.note = "warm-up s = compile + graph capture" + (
                f"; inductor skipped CUDA graphs {skipped} time(s) (see TORCH_LOGS=perf_hints)" if skipped else "")
        finally:
            del compiled
            torch._dynamo.reset()  # drops the graphs and their memory pool
    guarded(run.rows, row, cuda_graphs)


def cached_model_variant(run: ModelRun, services, row: Row, channels_last: bool, fused: bool):
    """channels_last and/or fused QKV applied to the cached model (what --compile does on CUDA before compiling),
    our default path measured, and the model put back as it was."""
    def change(pipeline, undo: bool):
        if channels_last:
            pipeline.unet.to(memory_format=torch.contiguous_format if undo else torch.channels_last)
        if fused:
            if undo:
                pipeline.unfuse_qkv_projections()
            else:
                pipeline.fuse_qkv_projections()

    with services.models.lease(None) as (_, model):
        change(model.pipeline, undo=False)
    try:
        run.measure(row, lambda: run_ours(services.generator, run.request, run.device))
    finally:
        with services.models.lease(None) as (_, model):
            change(model.pipeline, undo=True)


def phase_compile(run: ModelRun):
    """A fresh services with Settings(compile_unet=True): the first job compiles (warm-up), then steady runs."""
    services = build_services(run.settings(compile_unet=True))
    wanted_dir = services.settings.speed.compile_cache_dir
    try:
        def compiled_variant(row: Row):
            started = time.perf_counter()
            services.models.select(services.models.list_checkpoints()[0].title)  # the UNet compiles on first call
            load_s = time.perf_counter() - started
            used_dir = Path(inductor_cache_dir())  # where inductor really keeps its cache
            files_before = count_files(used_dir)
            run.measure(row, lambda: run_ours(services.generator, run.request, run.device))
            row.note = (f"compile cache {'warm' if files_before else 'cold'} ({files_before} files before) in "
                        f"{used_dir}" + ("" if used_dir == wanted_dir.resolve() else f", not {wanted_dir}")
                        + f"; load {load_s:.1f}s; {services.models.runtime_status}")
            run.extra["compile_cache"] = {"used": str(used_dir), "settings": str(wanted_dir),
                                          "files_before": files_before, "files_after": count_files(used_dir)}
        guarded(run.rows, run.row("ours: --compile", "ours", offered=True), compiled_variant)
    finally:
        services.close()
        torch._dynamo.reset()


# ---------------------------------------------------------------- flow models (Flux, SD3.5)

FLOW_PRECISION = {"cuda": "bf16", "cpu": "fp32"}  # Settings.precision of the flow runs (auto would be fp16 on CUDA)


def flow_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def full_flow_components(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> dict:
    """The full-size modules of `spec` from the bundled configs, random weights, built on `device` in `dtype`."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    family = spec.family
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the run's precision: Flux in fp32 alone would take 48 GB
    try:
        with torch.device(device):
            if family == "flux":
                t5_component = "text_encoder_2"
                components = {"transformer": FluxTransformer2DModel.from_config(base_config(family, "transformer")),
                              "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(
                                  base_config(family, "text_encoder")))}
            else:  # SD3.5 medium: the SD3 config with MMDiT-X (dual attention) in its first 13 blocks
                t5_component = "text_encoder_3"
                config = {**base_config(family, "transformer"), "dual_attention_layers": list(range(13))}
                components = {"transformer": SD3Transformer2DModel.from_config(config)}
                for name in ("text_encoder", "text_encoder_2"):
                    components[name] = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(
                        base_config(family, name)))
            components["vae"] = AutoencoderKL.from_config(base_config(family, "vae"))
            components[t5_component] = T5EncoderModel(T5Config.from_dict(base_config(family, t5_component)))
    finally:
        torch.set_default_dtype(previous)
    return components


def flow_file_states(spec: ModelSpec, components: dict) -> dict[str, dict[str, torch.Tensor]]:
    """File name (relative to models/) -> its tensors, in BFL's layout (Flux) or Stability's all-in-one (SD3)."""
    from backend.models.original_layout import VAE_PREFIX, classic_clip_state_dict, vae_to_original
    from tools.tiny_flow_models import transformer_original_state

    transformer = transformer_original_state(spec.family, components["transformer"])
    if spec.storage == "fp8":  # as the published fp8 files: matrices in fp8, norms and biases wider
        transformer = {k: v.to(torch.float8_e4m3fn) if v.ndim >= 2 else v for k, v in transformer.items()}
    vae = vae_to_original(components["vae"])
    if spec.family == "flux":
        return {"Stable-diffusion/flux1-dev.safetensors": transformer,
                "VAE/ae.safetensors": {k.removeprefix(VAE_PREFIX): v for k, v in vae.items()},
                "text_encoder/clip_l.safetensors": classic_clip_state_dict(components["text_encoder"]),
                "text_encoder/t5xxl_fp16.safetensors": dict(components["text_encoder_2"].state_dict())}
    state = {"model.diffusion_model." + k: v for k, v in transformer.items()}
    state.update(vae)
    for name, component in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        state.update({f"text_encoders.{name}.transformer." + k: v
                      for k, v in classic_clip_state_dict(components[component]).items()})
    state.update({"text_encoders.t5xxl.transformer." + k: v
                  for k, v in components["text_encoder_3"].state_dict().items()})
    return {"Stable-diffusion/sd3.5_medium_incl_clips_t5xxlfp16.safetensors": state}


def write_flow_model(spec: ModelSpec, models: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> int:
    """The model's files under `models/` (and the T5 tokenizer in text_encoder/t5_tokenizer). Returns their bytes."""
    from tools.tiny_flow_models import tiny_flow_components, tiny_t5_tokenizer

    components = tiny_flow_components(spec.family, seed=0) if tiny else full_flow_components(spec, device, dtype)
    files = flow_file_states(spec, components)
    del components
    free_memory()
    total = 0
    for name, state in files.items():
        path = models / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}, str(path))
        total += path.stat().st_size
    del files
    free_memory()
    tiny_t5_tokenizer().save_pretrained(str(models / "text_encoder" / "t5_tokenizer"))
    return total


def flow_request(spec: ModelSpec, args, size: int) -> Txt2ImgRequest:
    """Flux: CFG 1 (no negative pass) with Distilled CFG 3.5, as Forge's defaults; SD3.5: CFG 4.5, negative."""
    if spec.family == "flux":
        return Txt2ImgRequest(prompt=PROMPT, sampler_name=args.sampler, steps=args.steps, cfg_scale=1.0,
                              distilled_cfg_scale=3.5, width=size, height=size, seed=args.seed, save_images=False)
    return Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, sampler_name=args.sampler,
                          steps=args.steps, cfg_scale=4.5, width=size, height=size, seed=args.seed, save_images=False)


def plain_flow_pipeline(services, request: Txt2ImgRequest):
    """FluxPipeline / StableDiffusion3Pipeline over the cached model's modules, with our request's scheduler."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from backend.core.flow_samplers import build_flow_scheduler, resolve_flow_sampler

    with services.models.lease(request.checkpoint) as (_, model):
        sampler, schedule = resolve_flow_sampler(request.sampler_name, request.scheduler, model.label)
        scheduler = build_flow_scheduler(sampler, schedule, model.pipeline.scheduler.config, request.shift)
        components = {**model.pipeline.components, "scheduler": scheduler}
        pipeline = (FluxPipeline if model.family == "flux" else StableDiffusion3Pipeline)(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_plain_flow(pipeline, request: Txt2ImgRequest, device: torch.device) -> Run:
    stamps: list[float] = []

    def on_step(pipe, step, timestep, tensors):
        synchronize(device)
        stamps.append(time.perf_counter())
        return tensors

    if type(pipeline).__name__ == "FluxPipeline":
        guidance = {"guidance_scale": request.distilled_cfg_scale, "true_cfg_scale": request.cfg_scale}
    else:
        guidance = {"guidance_scale": request.cfg_scale, "negative_prompt": request.negative_prompt}
    synchronize(device)
    started = time.perf_counter()
    output = pipeline(prompt=request.prompt, num_inference_steps=request.steps, width=request.width,
                      height=request.height, generator=torch.Generator("cpu").manual_seed(request.seed),
                      output_type="pil", callback_on_step_end=on_step, **guidance)
    synchronize(device)
    end = time.perf_counter()
    if len(output.images) != 1 or len(stamps) != request.steps:
        raise RuntimeError(f"plain diffusers gave {len(output.images)} images and {len(stamps)} steps")
    return Run(end - started, stamps, end)


def bench_flow_model(spec: ModelSpec, args, device: torch.device, dtype: torch.dtype, workdir: Path) -> dict:
    size = spec.tiny_size if args.tiny else spec.size
    folder = workdir / spec.key
    print(f"\n{spec.label}: writing {'tiny' if args.tiny else 'full-size'} files with random weights ...", flush=True)
    started = time.perf_counter()
    written = write_flow_model(spec, folder / "models", args.tiny, device, dtype)
    write_s = time.perf_counter() - started
    print(f"  {written / GIB:.2f} GiB in {write_s:.1f}s", flush=True)
    run = ModelRun(spec, args, device, dtype, folder, flow_request(spec, args, size),
                   extra={"size": size, "checkpoint_bytes": written, "write_s": round(write_s, 2)})
    services = build_services(run.settings(precision=FLOW_PRECISION[device.type]))
    try:
        title = services.models.list_checkpoints()[0].title
        started = time.perf_counter()
        services.models.select(title)
        run.extra["load_s"] = round(time.perf_counter() - started, 2)
        run.extra["dtype"] = str(dtype).removeprefix("torch.") + (" computed, transformer stored in float8_e4m3fn"
                                                                   if spec.storage == "fp8" else "")
        run.extra["guidance"] = (f"CFG {run.request.cfg_scale:g}" + (
            f", Distilled CFG {run.request.distilled_cfg_scale:g}" if spec.family == "flux" else ""))
        run.extra["cached_bytes"] = sum(row["size_bytes"] for row in services.models.cache_report())
        print(f"  loaded through our loader in {run.extra['load_s']:.1f}s, {run.extra['cached_bytes'] / GIB:.2f} GiB "
              f"held ({services.models.runtime_status})", flush=True)
        plain = plain_flow_pipeline(services, run.request)
        guarded(run.rows, run.row("plain diffusers", "plain"),
                lambda row: run.measure(row, lambda: run_plain_flow(plain, run.request, device)))
        if not run.skipped("default"):
            guarded(run.rows, run.row("ours: default", "ours", offered=True),
                    lambda row: run.measure(row, lambda: run_ours(services.generator, run.request, device)))
        if not run.skipped("no-previews"):
            quiet = without_previews(services.generator)
            guarded(run.rows, run.row("ours: no previews", "ours", offered=True),
                    lambda row: run.measure(row, lambda: run_ours(quiet, run.request, device)))
    finally:
        services.close()
        shutil.rmtree(folder, ignore_errors=True)  # full-size Flux files take ~35 GB of disk
        free_memory()
    return {"model": spec.label, "key": spec.key, **run.extra, "rows": run.rows}


# ---------------------------------------------------------------- report

def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def verdicts(result: dict) -> list[dict]:
    rows = [r for r in result["rows"] if r.error is None and r.its]
    plain = next((r for r in rows if r.kind == "plain"), None)
    default = next((r for r in rows if r.variant == "ours: default"), None)
    offered = [r for r in rows if r.offered_mode]
    out = []
    if plain is None:
        return [{"target": "plain diffusers measured", "passed": False, "text": "no plain diffusers number"}]
    if offered:
        fastest = max(offered, key=lambda r: r.its)
        ratio = fastest.its / plain.its
        out.append({"target": f"fastest mode >= {FASTEST_TARGET}x plain diffusers", "ratio": round(ratio, 3),
                    "variant": fastest.variant, "passed": ratio >= FASTEST_TARGET})
    if default:
        ratio = default.its / plain.its
        out.append({"target": f"default mode >= {DEFAULT_TARGET}x plain diffusers", "ratio": round(ratio, 3),
                    "variant": default.variant, "passed": ratio >= DEFAULT_TARGET})
    return out


def print_report(results: list[dict], meta: dict):
    on_gpu = meta["device_type"] == "cuda"
    memory_label = "peak VRAM GiB" if on_gpu else "peak RSS GiB"
    print(f"\n== {meta['device']} | torch {meta['torch']} | diffusers {meta['diffusers']} | {meta['dtype']} | "
          f"{meta['steps']} steps, CFG 7, batch 1, {meta['sampler']}, {meta['runs']} runs (medians), "
          f"{meta['torch_threads']} torch threads")
    if not on_gpu:
        print("   CPU run with tiny models: checks the script; the numbers and targets say nothing about GPU speed")
    for result in results:
        rows = result["rows"]
        plain = next((r for r in rows if r.kind == "plain" and r.its), None)
        print(f"\n{result['model']} {result['size']}x{result['size']} "
              f"(checkpoint {result['checkpoint_bytes'] / GIB:.2f} GiB, written in {result['write_s']:.1f}s, "
              f"loaded in {result.get('load_s', 0):.1f}s"
              + (f", {result['cached_bytes'] / 2**20:.1f} MiB held in the model cache, {result['dtype']}, "
                 f"{result['guidance']}" if "cached_bytes" in result else "") + ")")
        print(f"{'variant':<44} {'it/s':>8} {'x plain':>8} {'job s':>7} {'decode s':>8} {memory_label:>13} "
              f"{'warm-up s':>9}  note")
        for r in rows:
            ratio = r.its / plain.its if (plain and r.its) else None
            note = r.error and f"ERROR {r.error}" or r.note
            print(f"{r.variant:<44} {fmt(r.its, '8.2f', 'n/a'):>8} {fmt(ratio, '8.2f'):>8} {fmt(r.job_s, '7.3f'):>7} "
                  f"{fmt(r.decode_s, '8.3f'):>8} {fmt(r.peak_bytes and r.peak_bytes / GIB, '13.2f'):>13} "
                  f"{fmt(r.warmup_s, '9.2f'):>9}  {note}")
        if on_gpu and not meta["tiny"] and MODELS[result["key"]].anchors:
            diffusers_anchor, fast_anchor = MODELS[result["key"]].anchors
            print(f"published H100 anchors: diffusers {diffusers_anchor} it/s, stable-fast {fast_anchor} it/s"
                  + (f"; our plain diffusers here {plain.its:.1f} it/s" if plain else ""))
        vae = result.get("vae")
        if vae and "error" in vae:
            print(f"VAE decode {vae['size']}x{vae['size']}: ERROR {vae['error']}")
        elif vae:
            print(f"VAE decode {vae['size']}x{vae['size']}{' (fp32 upcast)' if vae['upcast_fp32'] else ''}: "
                  f"whole {vae['whole_s']:.3f}s, {memory_label} {vae['whole_peak_bytes'] / GIB:.2f}; "
                  f"tiled {vae['tiled_s']:.3f}s, {memory_label} {vae['tiled_peak_bytes'] / GIB:.2f}"
                  + ("" if vae["tiled_active"] else " (tiling not available)"))
        previews = result.get("previews")
        if previews and "error" in previews:
            print(f"live preview: ERROR {previews['error']}")
        elif previews:
            print(f"live preview, per preview: cheap approximation {previews['cheap_ms']:.2f} ms, "
                  f"TAESD {previews['taesd_ms']:.2f} ms")
        for verdict in result["verdicts"]:
            state = "PASS" if verdict["passed"] else "FAIL"
            suffix = "" if on_gpu and not meta["tiny"] else "   [not meaningful: CPU/tiny run]"
            if "ratio" in verdict:
                print(f"{state}: {result['model']} {verdict['target']}: {verdict['ratio']:.2f}x "
                      f"({verdict['variant']}){suffix}")
            else:
                print(f"{state}: {result['model']} {verdict['text']}{suffix}")
    budget = "" if not on_gpu else f" (budget {TIME_BUDGET_S}s: {'ok' if meta['total_s'] <= TIME_BUDGET_S else 'OVER'})"
    print(f"\ntotal {meta['total_s']:.1f}s{budget}")


def row_json(row: Row) -> dict:
    data = dataclasses.asdict(row)
    for key in ("its", "job_s", "decode_s", "warmup_s"):
        if data[key] is not None:
            data[key] = round(data[key], 4)
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    diffusers.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # what Settings(precision="auto") picks
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=args.workdir))
    results = []
    failed = False
    try:
        for key in args.model_keys:
            result = bench_model(MODELS[key], args, device, dtype, workdir)
            result["verdicts"] = verdicts(result)
            failed = failed or any(r.error for r in result["rows"]) or any(
                "error" in (result.get(part) or {}) for part in ("vae", "previews"))
            results.append(result)
            free_memory()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"device": device_name, "device_type": device.type, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "dtype": str(dtype).removeprefix("torch."), "steps": args.steps,
            "runs": args.runs, "sampler": args.sampler, "tiny": args.tiny, "torch_threads": torch.get_num_threads(),
            "compile_cache": inductor_cache_dir(), "total_s": time.perf_counter() - started}
    print_report(results, meta)
    if args.json:
        payload = {"meta": {**meta, "total_s": round(meta["total_s"], 2),
                            "targets": {"fastest": FASTEST_TARGET, "default": DEFAULT_TARGET}},
                   "models": [{**{k: v for k, v in r.items() if k != "rows"}, "rows": [row_json(x) for x in r["rows"]]}
                              for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
