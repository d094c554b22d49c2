"""The one `generate` entry point: a request in, saved images and their infotext out.

Every generation job kind reads the same way: validate, lease the model, build the job's pipelines, then
for each batch: seeded noise, denoise (progress, preview, interrupt, skip), decode, save with infotext.
Upscale ("Extras") jobs need no checkpoint and run in backend.upscale.extras.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.core.errors import BatchSkipped, JobInterrupted
from backend.core.hires_sizes import hires_sizes
from backend.core.infotext import build_infotext
from backend.core.requests import (
    ExtrasRequest,
    GenerationRequest,
    GenerationResult,
    ImageResult,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
)
from backend.core.samplers import build_scheduler, resolve_sampler
from backend.generation.hires_fix import HiresPlan
from backend.generation.img2img import Img2ImgPlan
from backend.generation.pipelines import job_pipeline, seeded_generators
from backend.generation.previews import PreviewRenderer
from backend.generation.step_counter import StepCounter
from backend.jobs.outputs import OutputStore, encode_png
from backend.jobs.queue import JobProgress
from backend.models.manager import ModelManager
from backend.models.speed_options import vae_tiling
from backend.plugins.api import ExtensionHooks, SaveInfo, StepInfo
from backend.prompts.context import Networks
from backend.upscale.extras import run_extras
from backend.upscale.service import Upscalers


def output_size(request: GenerationRequest) -> tuple[int, int]:
    """Width and height of the images the job decodes (after hires fix or outpainting)."""
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        return hires_sizes(request.width, request.height, request.hr_scale, request.hr_resize_x,
                           request.hr_resize_y).final
    if isinstance(request, Img2ImgRequest):
        return (request.width + request.outpaint_left + request.outpaint_right,
                request.height + request.outpaint_up + request.outpaint_down)
    return request.width, request.height


@dataclass
class Generator:
    models: ModelManager
    outputs: OutputStore
    previews: PreviewRenderer | None = None
    preview_every: int = 5  # steps between live previews; 0 turns them off
    upscalers: Upscalers | None = None  # image upscalers for Extras jobs and the hires fix
    networks: Networks | None = None  # LoRAs, embeddings, VAEs, prompt encoding: needed by generation jobs
    hooks: ExtensionHooks = field(default_factory=ExtensionHooks)  # what extensions registered
    server_folders_refused: str | None = None  # why an Extras job may not read a server folder, or None

    def generate(self, request, progress: JobProgress) -> GenerationResult:
        if isinstance(request, ExtrasRequest):
            return self.extras(request, progress)
        if not isinstance(request, (Txt2ImgRequest, Img2ImgRequest)):
            raise RequestError("request", f"unsupported job kind {type(request).__name__}")
        if request.seed == -1:  # fixed first, so extensions (wildcards, grids) see the seed the images get
            request = request.model_copy(update={"seed": secrets.randbelow(2**32)})
        request = self.hooks.run_before_generate(request)
        run = self.hooks.wrap_generation(lambda job_request: self._generate_one(job_request, progress))
        result = run(request)
        self.hooks.run_after_generate(request, result)
        return result

    def _generate_one(self, request, progress: JobProgress) -> GenerationResult:
        return self.txt2img(request, progress) if isinstance(request, Txt2ImgRequest) \
            else self.img2img(request, progress)

    def extras(self, request: ExtrasRequest, progress: JobProgress) -> GenerationResult:
        if self.upscalers is None:
            raise RequestError("request", "upscaling is not available in this server")
        if request.input_dir and self.server_folders_refused:
            raise RequestError("input_dir", self.server_folders_refused)
        return run_extras(request, self.upscalers, self.outputs, progress)

    def txt2img(self, request: Txt2ImgRequest, progress: JobProgress) -> GenerationResult:
        if request.enable_hr:
            plan = HiresPlan.from_request(request, self.upscalers)
            return self._run(request, progress, "txt2img", plan.make_batch, plan.infotext_parameters(),
                             plan.pass_steps)

        def make_batch(pipeline_for, seeds, on_step, prompts):
            output = pipeline_for("txt2img")(
                num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                width=request.width, height=request.height, generator=seeded_generators(seeds),
                output_type="pil", **prompts.pipeline_arguments(request.steps, len(seeds), on_step))
            return output.images

        return self._run(request, progress, "txt2img", make_batch, {}, [request.steps])

    def img2img(self, request: Img2ImgRequest, progress: JobProgress) -> GenerationResult:
        plan = Img2ImgPlan.from_request(request)

        def make_batch(pipeline_for, seeds, on_step, prompts):
            return plan.make_batch(pipeline_for(plan.task), seeds, on_step, prompts)

        return self._run(request, progress, "img2img", make_batch, plan.infotext_parameters(), plan.pass_steps)

    def _run(self, request: GenerationRequest, progress: JobProgress, output_kind: str, make_batch: Callable,
             extra_parameters: dict, pass_steps: list[int]) -> GenerationResult:
        """`make_batch(pipeline_for, seeds, on_step, prompts)` gets its pipelines from `pipeline_for(task)`: one
        per task, each with its own scheduler (and the job's VAE), built on first use and sharing the cached
        model's modules; `prompts.pipeline_arguments(...)` gives it the encoded, scheduled prompts. `pass_steps`:
        the user's steps of each pipeline call of a batch, in order (the progress counts them).

        Interrupted, a batch stops sampling (diffusers' `_interrupt`) and its images are made from the current
        latents and saved, as A1111 does; no further batch starts. At shutdown (`keep_partial` off) it stops at
        once and saves nothing more."""
        extra_samplers = self.hooks.sampler_specs()
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler, extra_samplers)
        seed = request.seed if request.seed != -1 else secrets.randbelow(2**32)
        steps = StepCounter(pass_steps)
        progress.batches, progress.steps_per_batch = request.n_iter, steps.per_batch or 1
        images: list[ImageResult] = []
        with (self.models.lease(request.checkpoint) as (entry, model),  # never evicted while the job runs
              self._networks.prepare(request, model, entry.path) as prompts,  # LoRAs removed afterwards
              vae_tiling(prompts.vae or model.pipeline.vae,
                         self.models.settings.speed.tiles_vae(*output_size(request))) as tiled_vae):
            pipelines: dict[str, object] = {}
            vae = prompts.vae or model.pipeline.vae
            if self.previews and self.preview_every:  # fitted once per VAE (then kept in the cache folder)
                self.previews.prepare(vae, prompts.vae_file if prompts.vae else entry.path, model.family)
            if tiled_vae:  # tiles blend at their seams: the pixels differ slightly from a whole-image decode
                extra_parameters = {**extra_parameters, "Tiled VAE": "True"}

            def pipeline_for(task: str):
                if task not in pipelines:
                    scheduler = build_scheduler(sampler, schedule, model.pipeline.scheduler.config, extra_samplers)
                    pipelines[task] = job_pipeline(model, task, scheduler, entry.title, vae=prompts.vae)
                return pipelines[task]

            def on_step(pipe, step, timestep, tensors):
                done = steps.after_call(step, pipe.num_timesteps)
                if done != progress.step:
                    progress.step = done
                    progress.note_step()
                    if self.previews and self.preview_every and done % self.preview_every == 0:
                        progress.preview = self.previews.render(tensors["latents"][0], model.family, vae)
                        progress.preview_step = done
                if self.hooks.on_step:
                    self.hooks.run_on_step(StepInfo(request, step + 1, pipe.num_timesteps, progress.batch,
                                                    tensors["latents"]))
                if progress.interrupt_requested:
                    if not progress.keep_partial:
                        raise JobInterrupted()
                    pipe._interrupt = True  # diffusers skips the remaining steps and decodes these latents
                progress.check_skip()
                return tensors

            try:
                for batch in range(request.n_iter):
                    if progress.interrupt_requested:
                        break
                    progress.batch, progress.step = batch, 0
                    steps.start_batch()
                    seeds = [seed + batch * request.batch_size + i for i in range(request.batch_size)]
                    image_prompts = self._image_prompts(request, seeds, batch * request.batch_size)
                    try:
                        batch_images = make_batch(pipeline_for, seeds, on_step, prompts.for_images(image_prompts))
                    except BatchSkipped:
                        continue
                    for position, (image, image_seed, (image_prompt, image_negative)) in enumerate(
                            zip(batch_images, seeds, image_prompts)):
                        parameters = {
                            "Steps": request.steps, "Sampler": sampler, "Schedule type": schedule,
                            "CFG scale": request.cfg_scale, "Seed": image_seed,
                            "Size": f"{image.width}x{image.height}",
                            "Model hash": entry.short_hash, "Model": entry.model_name,
                            **extra_parameters, **prompts.infotext,
                            "Batch size": request.batch_size if request.batch_size > 1 else None,
                            "Batch pos": position if request.batch_size > 1 else None,
                        }
                        if self.hooks.before_save:
                            parameters |= self.hooks.run_before_save(SaveInfo(request, image, image_seed,
                                                                              dict(parameters), image_prompt,
                                                                              image_negative))
                        infotext = build_infotext(image_prompt, image_negative, parameters)
                        png = encode_png(image, infotext)
                        path = self.outputs.save_png(png, output_kind, image_seed) if request.save_images else None
                        images.append(ImageResult(png=png, path=path and str(path), seed=image_seed,
                                                  prompt=image_prompt, negative_prompt=image_negative,
                                                  infotext=infotext))
                        progress.image_saved(images[-1])
                    if not progress.interrupt_requested:
                        progress.step = progress.steps_per_batch
                        progress.note_step()
            except JobInterrupted:
                pass
        return GenerationResult(images=images, interrupted=progress.interrupt_requested, model_label=model.label,
                                warnings=prompts.warnings)

    def _image_prompts(self, request: GenerationRequest, seeds: list[int], first_index: int) -> list[tuple[str, str]]:
        """Each image's prompt and negative prompt: the request's, unless an extension chooses per image."""
        if not self.hooks.image_prompt:
            return [(request.prompt, request.negative_prompt)] * len(seeds)
        return [self.hooks.run_image_prompt(request, image_seed, first_index + i) for i, image_seed in enumerate(seeds)]

    @property
    def _networks(self) -> Networks:
        if self.networks is None:
            raise RequestError("request", "this server was built without prompt networks")
        return self.networks
