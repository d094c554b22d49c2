"""The one `generate` entry point: a request in, saved images and their infotext out.

Every generation job kind reads the same way: validate, lease the model, build the job's pipelines, then
for each batch: seeded noise, denoise (progress, preview, interrupt, skip), decode, save with infotext.
Upscale ("Extras") jobs need no checkpoint and run in backend.upscale.extras.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.core.hires_sizes import hires_sizes
from backend.core.options import Options
from backend.core.requests import (
    ExtrasRequest,
    GenerationRequest,
    GenerationResult,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
)
from backend.core.samplers import resolve_sampler
from backend.generation.hires_fix import HiresPlan
from backend.generation.img2img import Img2ImgPlan
from backend.generation.job_run import GenerationRun, MakeBatch
from backend.generation.pipelines import seeded_generators
from backend.generation.previews import PreviewRenderer
from backend.generation.step_counter import StepCounter
from backend.jobs.outputs import OutputStore
from backend.jobs.queue import JobProgress
from backend.models.manager import ModelManager
from backend.models.speed_options import vae_tiling
from backend.plugins.api import ExtensionHooks
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


def preview_period(options: Options, steps_per_batch: int) -> int:
    """Sampling steps between live previews (0: none), as A1111's options say: -1 shows one as each batch ends."""
    if not options.live_previews_enable or options.show_progress_every_n_steps == 0:
        return 0
    return steps_per_batch if options.show_progress_every_n_steps < 0 else options.show_progress_every_n_steps


@dataclass
class Generator:
    models: ModelManager
    outputs: OutputStore
    previews: PreviewRenderer | None = None
    options: Callable[[], Options] = Options  # the user options in effect (live previews)
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

    def _run(self, request: GenerationRequest, progress: JobProgress, output_kind: str, make_batch: MakeBatch,
             extra_parameters: dict, pass_steps: list[int]) -> GenerationResult:
        """`make_batch(pipeline_for, seeds, on_step, prompts)` makes one batch's images (see GenerationRun);
        `pass_steps`: the user's steps of each pipeline call of a batch, in order (the progress counts them)."""
        extra_samplers = self.hooks.sampler_specs()
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler, extra_samplers)
        seed = request.seed if request.seed != -1 else secrets.randbelow(2**32)
        steps = StepCounter(pass_steps)
        preview_every = preview_period(self.options(), steps.per_batch)
        progress.batches, progress.steps_per_batch = request.n_iter, steps.per_batch or 1
        with (self.models.lease(request.checkpoint) as (entry, model),  # never evicted while the job runs
              self._networks.prepare(request, model, entry.path) as prompts,  # LoRAs removed afterwards
              vae_tiling(prompts.vae or model.pipeline.vae,
                         self.models.settings.speed.tiles_vae(*output_size(request))) as tiled_vae):
            if self.previews and preview_every:  # fitted once per VAE (then kept in the cache folder)
                self.previews.prepare(prompts.vae or model.pipeline.vae,
                                      prompts.vae_file if prompts.vae else entry.path, model.family)
            if tiled_vae:  # tiles blend at their seams: the pixels differ slightly from a whole-image decode
                extra_parameters = {**extra_parameters, "Tiled VAE": "True"}
            run = GenerationRun(
                request=request, progress=progress, entry=entry, model=model, prompts=prompts, sampler=sampler,
                schedule=schedule, extra_samplers=extra_samplers, steps=steps, outputs=self.outputs,
                hooks=self.hooks, output_kind=output_kind, infotext_parameters=extra_parameters,
                image_prompts=lambda seeds, first: self._image_prompts(request, seeds, first),
                previews=self.previews, preview_every=preview_every)
            run.run_batches(make_batch, seed)
        return GenerationResult(images=run.images, interrupted=progress.interrupt_requested, model_label=model.label,
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
