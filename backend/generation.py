"""The one `generate` entry point: a request in, saved images and their infotext out."""
from __future__ import annotations

import inspect
import secrets
from dataclasses import dataclass

import torch

from backend.infotext import build_infotext
from backend.job_queue import BatchSkipped, JobInterrupted, JobProgress
from backend.model_manager import ModelManager
from backend.outputs import OutputStore, encode_png
from backend.previews import PreviewRenderer
from backend.requests import GenerationResult, ImageResult, RequestError, Txt2ImgRequest
from backend.samplers import build_scheduler, resolve_sampler


def _with_scheduler(pipeline, scheduler):
    """A pipeline for one job that shares every model with the cached one but has its own scheduler,
    so per-request sampler choices never mutate shared state."""
    accepted = inspect.signature(type(pipeline).__init__).parameters
    kwargs = {**pipeline.components, "scheduler": scheduler}
    kwargs.update({k: v for k, v in pipeline.config.items() if k in accepted and k not in kwargs})
    job_pipeline = type(pipeline)(**kwargs)
    job_pipeline.set_progress_bar_config(disable=True)
    return job_pipeline


@dataclass
class Generator:
    models: ModelManager
    outputs: OutputStore
    previews: PreviewRenderer | None = None
    preview_every: int = 5  # steps between live previews; 0 turns them off

    def generate(self, request, progress: JobProgress) -> GenerationResult:
        if isinstance(request, Txt2ImgRequest):
            return self.txt2img(request, progress)
        raise RequestError("request", f"unsupported job kind {type(request).__name__}")

    def txt2img(self, request: Txt2ImgRequest, progress: JobProgress) -> GenerationResult:
        # 1. validate what the request object alone cannot know
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        seed = request.seed if request.seed != -1 else secrets.randbelow(2**32)
        progress.batches = request.n_iter
        images: list[ImageResult] = []
        # 2. lease the model for the whole job: it cannot be evicted meanwhile
        with self.models.lease(request.checkpoint) as (entry, model):
            if model.inpainting or model.family == "sdxl-refiner":
                raise RequestError("checkpoint", f"{entry.title} is an {model.label} model; it cannot do txt2img")
            base = model.pipeline
            pipeline = _with_scheduler(base, build_scheduler(sampler, schedule, base.scheduler.config))

            def on_step(pipe, step, timestep, tensors):
                progress.steps_per_batch = pipe.num_timesteps
                progress.step = step + 1
                if self.previews and self.preview_every and progress.step % self.preview_every == 0:
                    progress.preview = self.previews.render(tensors["latents"][0], model.family)
                    progress.preview_step = progress.step
                progress.check_interrupt()
                return tensors

            try:
                for batch in range(request.n_iter):
                    progress.batch, progress.step = batch, 0
                    seeds = [seed + batch * request.batch_size + i for i in range(request.batch_size)]
                    # 3-6. encode prompt, seeded latents (CPU RNG: same seed, same image on any device),
                    # denoise with per-step progress/preview/interrupt/skip, decode
                    try:
                        output = pipeline(
                            prompt=[request.prompt] * request.batch_size,
                            negative_prompt=[request.negative_prompt] * request.batch_size,
                            num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                            width=request.width, height=request.height,
                            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                            callback_on_step_end=on_step, output_type="pil")
                    except BatchSkipped:
                        continue
                    # 7. save with infotext
                    for position, (image, image_seed) in enumerate(zip(output.images, seeds)):
                        infotext = build_infotext(request.prompt, request.negative_prompt, {
                            "Steps": request.steps, "Sampler": sampler, "Schedule type": schedule,
                            "CFG scale": request.cfg_scale, "Seed": image_seed,
                            "Size": f"{request.width}x{request.height}",
                            "Model hash": entry.short_hash, "Model": entry.model_name,
                            "Batch size": request.batch_size if request.batch_size > 1 else None,
                            "Batch pos": position if request.batch_size > 1 else None,
                        })
                        png = encode_png(image, infotext)
                        path = self.outputs.save_png(png, "txt2img", image_seed) if request.save_images else None
                        images.append(ImageResult(png=png, path=path and str(path), seed=image_seed,
                                                  prompt=request.prompt, negative_prompt=request.negative_prompt,
                                                  infotext=infotext))
            except JobInterrupted:
                return GenerationResult(images=images, interrupted=True)
        return GenerationResult(images=images)
