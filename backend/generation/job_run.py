"""One generation job once its model is leased and its prompts prepared: the job's pipelines, the step callback
(progress, live preview, extension hooks, interrupt and skip), the batch loop and saving each image with its
infotext. backend.generation.generator sets it up; the job kinds differ only in `make_batch`."""
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.core.errors import BatchSkipped, JobInterrupted
from backend.core.flow_samplers import build_flow_scheduler
from backend.core.infotext import build_infotext
from backend.core.model_family import FLOW_FAMILIES
from backend.core.options import Options
from backend.core.requests import GenerationRequest, ImageResult
from backend.core.samplers import SamplerSpec, build_scheduler
from backend.generation.flow_guidance import effective_cfg, preview_latent
from backend.generation.noise import BatchNoise, NoiseOptions
from backend.generation.pipelines import job_pipeline
from backend.generation.previews import PreviewRenderer
from backend.generation.refiner import LeasedModel, Refiner
from backend.generation.step_counter import StepCounter
from backend.jobs.file_names import ImageFacts
from backend.jobs.outputs import OutputStore, encode_png
from backend.jobs.queue import JobProgress
from backend.models.loader import LoadedModel
from backend.models.registry import CheckpointEntry
from backend.plugins.api import ExtensionHooks, SaveInfo, StepInfo
from backend.prompts.context import JobNetworks

# make_batch(pipeline_for, noise, on_step, prompts, second) -> the batch's PIL images (noise: the batch's seeds and
# noise; second: the job's other models, SecondModels)
MakeBatch = Callable[[Callable[[str], object], BatchNoise, Callable, object, object], list]


@dataclass(frozen=True)
class SecondModels:
    """The models a job uses besides its checkpoint: the refiner, the hires fix's own checkpoint."""
    refiner: Refiner | None = None
    hires: LeasedModel | None = None

    @property
    def infotext(self) -> dict:
        hires = self.hires.entry if self.hires else None
        return {**(self.refiner.infotext if self.refiner else {}),
                "Hires checkpoint": f"{hires.model_name} [{hires.short_hash}]" if hires else None}


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
    second: SecondModels = field(default_factory=SecondModels)
    options: Options = field(default_factory=Options)  # the job's user options (saving), override_settings applied
    images: list[ImageResult] = field(default_factory=list)
    job_timestamp: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
    _pipelines: dict[str, object] = field(default_factory=dict)

    @property
    def vae(self):
        return self.prompts.vae or self.model.pipeline.vae

    def pipeline_for(self, task: str, sampler: tuple[str, str] | None = None, leased: LeasedModel | None = None):
        """One pipeline per task, sampler ((name, schedule), default the job's) and model (`leased`, default the
        job's checkpoint), with its own scheduler (and the job's VAE), built on first use and sharing the cached
        model's modules."""
        sampler = sampler or (self.sampler, self.schedule)
        model, entry, vae = (leased.model, leased.entry, leased.prompts.vae) if leased else (
            self.model, self.entry, self.prompts.vae)
        key = (task, sampler, entry.title)
        if key not in self._pipelines:
            base_config = model.pipeline.scheduler.config
            if model.family in FLOW_FAMILIES:
                scheduler = build_flow_scheduler(*sampler, base_config, self.request.shift)
            else:
                scheduler = build_scheduler(*sampler, base_config, self.extra_samplers)
            self._pipelines[key] = job_pipeline(model, task, scheduler, entry.title, vae=vae)
        return self._pipelines[key]

    def on_step(self, pipe, step, timestep, tensors):
        progress = self.progress
        done = self.steps.after_call(step, pipe.num_timesteps)
        if done != progress.step:
            progress.step = done
            progress.note_step()
            if self.previews and self.preview_every and done % self.preview_every == 0:
                latent = preview_latent(tensors["latents"], self.request.width, self.request.height)
                progress.preview = self.previews.render(latent, self.model.family, self.vae)
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

    def batch_noise(self, seed: int, subseed: int, first_index: int) -> BatchNoise:
        """Image i of the job gets seed + i and subseed + i; with a variation strength the seed stays and only
        the variation seed counts up, as A1111 does."""
        request = self.request
        indices = range(first_index, first_index + request.batch_size)
        varies = request.subseed_strength > 0
        seeds = [request.image_seeds[index] for index in indices] if request.image_seeds else \
            [seed if varies else seed + index for index in indices]
        return BatchNoise(seeds=seeds,
                          subseeds=[subseed + index for index in indices],
                          options=NoiseOptions.from_request(request))

    def run_batches(self, make_batch: MakeBatch, seed: int, subseed: int = 0):
        """Interrupted, a batch stops sampling and its images are made from the current latents and saved, as
        A1111 does; no further batch starts. At shutdown (`keep_partial` off) it stops at once."""
        request, progress = self.request, self.progress
        try:
            for batch in range(request.n_iter):
                if progress.interrupt_requested:
                    break
                progress.batch, progress.step = batch, 0
                self.steps.start_batch()
                noise = self.batch_noise(seed, subseed, batch * request.batch_size)
                image_prompts = self.image_prompts(noise.seeds, batch * request.batch_size)
                try:
                    batch_images = make_batch(self.pipeline_for, noise, self.on_step,
                                              self.prompts.for_images(image_prompts), self.second)
                except BatchSkipped:
                    continue
                for position, (image, image_seed, image_subseed, prompts) in enumerate(
                        zip(batch_images, noise.seeds, noise.subseeds, image_prompts)):
                    self.save(image, image_seed, position, *prompts, subseed=image_subseed)
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

    def save(self, image, seed: int, position: int, prompt: str, negative_prompt: str, subseed: int = -1):
        """The image's infotext (extensions may add keys), its PNG, saved unless the request says not to."""
        request = self.request
        parameters = {
            "Steps": request.steps, "Sampler": self.sampler, "Schedule type": self.schedule,
            "CFG scale": effective_cfg(request, self.model.family), "Seed": seed,
            "Face restoration": request.face_restoration_model if request.restore_faces else None,
            "Size": f"{image.width}x{image.height}",
            "Model hash": self.entry.short_hash, "Model": self.entry.model_name,
            **noise_infotext(request, subseed), **self.infotext_parameters, **self.prompts.infotext,
            **self.second.infotext, **request.infotext_extra,
            "Batch size": request.batch_size if request.batch_size > 1 else None,
            "Batch pos": position if request.batch_size > 1 else None,
        }
        if self.hooks.before_save:
            parameters |= self.hooks.run_before_save(SaveInfo(request, image, seed, dict(parameters), prompt,
                                                              negative_prompt))
        infotext = build_infotext(prompt, negative_prompt, parameters)
        png = encode_png(image, infotext)
        # samples_save off: not written, still shown and returned, as A1111
        path = self.outputs.save_image(image, self.output_kind, infotext, self.image_facts(
            image, seed, position, prompt, negative_prompt), options=self.options) \
            if request.save_images and self.options.samples_save else None
        self.images.append(ImageResult(png=png, path=path and str(path), seed=seed, subseed=subseed, prompt=prompt,
                                       negative_prompt=negative_prompt, infotext=infotext))
        self.progress.image_saved(self.images[-1])


def noise_infotext(request: GenerationRequest, subseed: int) -> dict:
    """A1111's keys for the noise options that are not at their defaults (ours: CPU noise, so "RNG" is written
    only for GPU noise)."""
    varies = request.subseed_strength > 0
    resized = min(request.seed_resize_from_w, request.seed_resize_from_h) > 0
    return {
        "Variation seed": subseed if varies else None,
        "Variation seed strength": request.subseed_strength if varies else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if resized else None,
        "ENSD": request.eta_noise_seed_delta or None,
        "RNG": request.randn_source if request.randn_source != "CPU" else None,
        "Tiling": True if request.tiling else None,
        "Tiling axes": request.tiling_axes if request.tiling and request.tiling_axes != "XY" else None,
    }
