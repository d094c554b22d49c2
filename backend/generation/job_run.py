"""One generation job once its model is leased and its prompts prepared: the job's pipelines, the step callback
(progress, live preview, extension hooks, interrupt and skip), the batch loop and saving each image with its
infotext. backend.generation.generator sets it up; the job kinds differ only in `make_batch`."""
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.core.errors import BatchSkipped, JobInterrupted
from backend.core.infotext import build_infotext
from backend.core.requests import GenerationRequest, ImageResult
from backend.core.samplers import SamplerSpec, build_scheduler
from backend.generation.pipelines import job_pipeline
from backend.generation.previews import PreviewRenderer
from backend.generation.step_counter import StepCounter
from backend.jobs.file_names import ImageFacts
from backend.jobs.outputs import OutputStore, encode_png
from backend.jobs.queue import JobProgress
from backend.models.loader import LoadedModel
from backend.models.registry import CheckpointEntry
from backend.plugins.api import ExtensionHooks, SaveInfo, StepInfo
from backend.prompts.context import JobNetworks

# make_batch(pipeline_for, seeds, on_step, prompts) -> the batch's PIL images
MakeBatch = Callable[[Callable[[str], object], list[int], Callable, object], list]


@dataclass
class GenerationRun:
    request: GenerationRequest
    progress: JobProgress
    entry: CheckpointEntry
    model: LoadedModel
    prompts: JobNetworks
    sampler: str
    schedule: str
    extra_samplers: dict[str, SamplerSpec]
    steps: StepCounter
    outputs: OutputStore
    hooks: ExtensionHooks
    output_kind: str  # "txt2img" | "img2img": the outputs folder
    infotext_parameters: dict  # the job kind's own infotext keys (hires fix, denoising ...)
    image_prompts: Callable[[list[int], int], list[tuple[str, str]]]  # (seeds, first index) -> each image's prompts
    previews: PreviewRenderer | None = None
    preview_every: int = 0
    images: list[ImageResult] = field(default_factory=list)
    job_timestamp: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
    _pipelines: dict[str, object] = field(default_factory=dict)

    @property
    def vae(self):
        return self.prompts.vae or self.model.pipeline.vae

    def pipeline_for(self, task: str):
        """One pipeline per task, with its own scheduler (and the job's VAE), built on first use and sharing the
        cached model's modules."""
        if task not in self._pipelines:
            scheduler = build_scheduler(self.sampler, self.schedule, self.model.pipeline.scheduler.config,
                                        self.extra_samplers)
            self._pipelines[task] = job_pipeline(self.model, task, scheduler, self.entry.title, vae=self.prompts.vae)
        return self._pipelines[task]

    def on_step(self, pipe, step, timestep, tensors):
        progress = self.progress
        done = self.steps.after_call(step, pipe.num_timesteps)
        if done != progress.step:
            progress.step = done
            progress.note_step()
            if self.previews and self.preview_every and done % self.preview_every == 0:
                progress.preview = self.previews.render(tensors["latents"][0], self.model.family, self.vae)
                progress.preview_step = done
        if self.hooks.on_step:
            self.hooks.run_on_step(StepInfo(self.request, step + 1, pipe.num_timesteps, progress.batch,
                                            tensors["latents"]))
        if progress.interrupt_requested:
            if not progress.keep_partial:
                raise JobInterrupted()
            pipe._interrupt = True  # diffusers skips the remaining steps and decodes these latents
        progress.check_skip()
        return tensors

    def run_batches(self, make_batch: MakeBatch, seed: int):
        """Interrupted, a batch stops sampling and its images are made from the current latents and saved, as
        A1111 does; no further batch starts. At shutdown (`keep_partial` off) it stops at once."""
        request, progress = self.request, self.progress
        try:
            for batch in range(request.n_iter):
                if progress.interrupt_requested:
                    break
                progress.batch, progress.step = batch, 0
                self.steps.start_batch()
                seeds = [seed + batch * request.batch_size + i for i in range(request.batch_size)]
                image_prompts = self.image_prompts(seeds, batch * request.batch_size)
                try:
                    batch_images = make_batch(self.pipeline_for, seeds, self.on_step,
                                              self.prompts.for_images(image_prompts))
                except BatchSkipped:
                    continue
                for position, (image, image_seed, prompts) in enumerate(zip(batch_images, seeds, image_prompts)):
                    self.save(image, image_seed, position, *prompts)
                if not progress.interrupt_requested:
                    progress.step = progress.steps_per_batch
                    progress.note_step()
        except JobInterrupted:
            pass

    def image_facts(self, image, seed: int, position: int, prompt: str, negative_prompt: str) -> ImageFacts:
        """What the file name patterns may use."""
        request = self.request
        return ImageFacts(seed=seed, prompt=prompt, negative_prompt=negative_prompt, steps=request.steps,
                          cfg_scale=request.cfg_scale, sampler=self.sampler, scheduler=self.schedule,
                          width=image.width, height=image.height, model_name=self.entry.model_name,
                          model_hash=self.entry.short_hash or "", batch_size=request.batch_size,
                          batch_index=position, iteration=self.progress.batch, n_iter=request.n_iter,
                          denoising_strength=getattr(request, "denoising_strength", None),
                          clip_skip=request.clip_skip,
                          job_timestamp=self.job_timestamp)

    def save(self, image, seed: int, position: int, prompt: str, negative_prompt: str):
        """The image's infotext (extensions may add keys), its PNG, saved unless the request says not to."""
        request = self.request
        parameters = {
            "Steps": request.steps, "Sampler": self.sampler, "Schedule type": self.schedule,
            "CFG scale": request.cfg_scale, "Seed": seed, "Size": f"{image.width}x{image.height}",
            "Model hash": self.entry.short_hash, "Model": self.entry.model_name,
            **self.infotext_parameters, **self.prompts.infotext,
            "Batch size": request.batch_size if request.batch_size > 1 else None,
            "Batch pos": position if request.batch_size > 1 else None,
        }
        if self.hooks.before_save:
            parameters |= self.hooks.run_before_save(SaveInfo(request, image, seed, dict(parameters), prompt,
                                                              negative_prompt))
        infotext = build_infotext(prompt, negative_prompt, parameters)
        png = encode_png(image, infotext)
        path = self.outputs.save_image(image, self.output_kind, infotext, self.image_facts(
            image, seed, position, prompt, negative_prompt)) if request.save_images else None
        self.images.append(ImageResult(png=png, path=path and str(path), seed=seed, prompt=prompt,
                                       negative_prompt=negative_prompt, infotext=infotext))
        self.progress.image_saved(self.images[-1])
