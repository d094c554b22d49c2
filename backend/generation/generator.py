"""The one `generate` entry point: a request in, saved images and their infotext out.

Every generation job kind reads the same way: validate, lease the model, build the job's pipelines, then
for each batch: seeded noise, denoise (progress, preview, interrupt, skip), decode, save with infotext.
Upscale ("Extras") jobs need no checkpoint and run in backend.upscale.extras.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from backend.controlnet.service import ControlNets
from backend.core.flow_samplers import resolve_flow_sampler
from backend.core.hires_sizes import hires_sizes
from backend.core.model_family import FLOW_FAMILIES
from backend.core.options import Options
from backend.core.requests import (
    ExtrasRequest,
    GenerationRequest,
    GenerationResult,
    Img2ImgBatchRequest,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
)
from backend.core.samplers import SCHEDULE_NAMES, resolve_sampler, sampler_table
from backend.core.scripts import Script, find_script
from backend.generation.batch_grid import with_batch_grid
from backend.generation.controlnet_run import prepared_controls
from backend.generation.flow_guidance import (
    check_flow_request,
    check_skip_layer_guidance,
    flow_infotext,
    flow_warnings,
    guidance_arguments,
    is_flow,
)
from backend.generation.hires_fix import HiresPlan
from backend.generation.img2img import Img2ImgPlan
from backend.generation.img2img_batch import item_request, plan_batch, write_results
from backend.generation.init_images import generate_per_init_image
from backend.generation.job_run import GenerationRun, LeasedModel, MakeBatch, SecondModels
from backend.generation.previews import PreviewRenderer
from backend.generation.refiner import Refiner, check_compatible, refined
from backend.generation.scripts.always_on import always_on_scripts
from backend.generation.scripts.job import ScriptJob
from backend.generation.scripts.menu import builtin_scripts
from backend.generation.seamless import seamless
from backend.generation.step_counter import StepCounter
from backend.jobs.outputs import OutputStore
from backend.jobs.queue import JobProgress
from backend.models.manager import ModelManager
from backend.models.speed_options import vae_tiling
from backend.models.weight_files import CheckpointError
from backend.plugins.api import ExtensionHooks
from backend.prompts.context import Networks
from backend.prompts.styles import StyleStore, apply_styles
from backend.upscale.extras import run_extras
from backend.upscale.face_restoration import FaceRestorers
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
    styles: StyleStore | None = None  # styles.csv: the styles a request names are applied from it
    faces: FaceRestorers | None = None  # face restoration (Restore faces, Extras' GFPGAN visibility)
    controlnets: ControlNets | None = None  # ControlNet models and preprocessors, for requests with units

    def generate(self, request, progress: JobProgress) -> GenerationResult:
        if isinstance(request, ExtrasRequest):
            return self.extras(request, progress)
        if isinstance(request, Img2ImgBatchRequest):
            return self.img2img_batch(request, progress)
        if not isinstance(request, (Txt2ImgRequest, Img2ImgRequest)):
            raise RequestError("request", f"unsupported job kind {type(request).__name__}")
        if request.script_name:  # the script makes its images through generate_images and draws its own grids
            return self._run_script(request, progress)
        result = self.generate_images(request, progress)
        if not progress.keep_partial:  # stopping the server: nothing more is written
            return result
        return with_batch_grid(request, result, self.job_options(request), self.outputs,
                               "img2img" if isinstance(request, Img2ImgRequest) else "txt2img")

    def job_options(self, request) -> Options:
        """The user options a job runs with: those in effect, with the request's override_settings."""
        overrides = getattr(request, "override_settings", None)
        return self.options().model_copy(update=overrides) if overrides else self.options()

    def generate_images(self, request, progress: JobProgress) -> GenerationResult:
        """One txt2img or img2img request (no script) made into its images: styles, extension hooks, batches,
        saving; no batch grid (scripts and img2img Batch call this for each request they make, as A1111's
        do_not_save_grid)."""
        for name in ("seed", "subseed"):  # fixed first, so extensions (wildcards, grids) see the seeds images get
            if getattr(request, name) == -1:
                request = request.model_copy(update={name: secrets.randbelow(2**32)})
        if isinstance(request, Img2ImgRequest) and request.extra_init_images:  # seeds fixed above: each image's own
            return generate_per_init_image(request, lambda one: self.generate_images(one, progress),
                                           self.hooks.sampler_specs())
        if request.styles:  # applied once, first: extensions and X/Y/Z cells see the styled prompts, as in A1111
            request = self._apply_styles(request)
        request = self.hooks.run_before_generate(request)
        run = self.hooks.wrap_generation(lambda job_request: self._generate_one(job_request, progress))
        result = run(request)
        self.hooks.run_after_generate(request, result)
        return result

    def scripts(self) -> list[Script]:
        """The Script menu: the built-in scripts, then those extensions added."""
        return [*builtin_scripts(self.upscalers.names() if self.upscalers else []),
                *(registered.value for registered in self.hooks.scripts)]

    def always_on_scripts(self) -> list[Script]:
        """A1111's always-on scripts this server has the features of (Sampler, Seed, Refiner)."""
        return always_on_scripts(list(sampler_table(self.hooks.sampler_specs())), list(SCHEDULE_NAMES),
                                 [entry.title for entry in self.models.registry.entries])

    def check_script(self, request):
        """The request with its script's arguments checked (defaults filled in), or RequestError naming
        script_name / script_args[i]."""
        if not getattr(request, "script_name", None):
            return request
        tab = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        script = find_script(self.scripts(), request.script_name, tab)
        return request.model_copy(update={"script_name": script.name,
                                          "script_args": script.check_args(request.script_args)})

    def _run_script(self, request, progress: JobProgress) -> GenerationResult:
        tab = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        script = find_script(self.scripts(), request.script_name, tab)
        job = ScriptJob(request=request.model_copy(update={"script_name": None, "script_args": []}),
                        args=script.check_args(request.script_args), tab=tab,
                        generate=lambda sub_request: self.generate_images(sub_request, progress),
                        outputs=self.outputs, options=self.job_options(request),
                        progress=progress, samplers=self.hooks.sampler_specs(),
                        upscaler=lambda image, name, size: self.upscalers.upscale(image, name, size,
                                                                                  "script_args[2]"))
        return script.run(job)

    def _apply_styles(self, request: GenerationRequest) -> GenerationRequest:
        if self.styles is None:
            raise RequestError("styles", "this server has no styles file")
        styles = self.styles.resolve(request.styles)
        prompt, negative_prompt = apply_styles(request.prompt, request.negative_prompt, styles)
        image_prompts = [apply_styles(*pair, styles) for pair in request.image_prompts]
        return request.model_copy(update={"prompt": prompt, "negative_prompt": negative_prompt, "styles": [],
                                          "image_prompts": image_prompts})

    def _generate_one(self, request, progress: JobProgress) -> GenerationResult:
        return self.txt2img(request, progress) if isinstance(request, Txt2ImgRequest) \
            else self.img2img(request, progress)

    def extras(self, request: ExtrasRequest, progress: JobProgress) -> GenerationResult:
        if self.upscalers is None:
            raise RequestError("request", "upscaling is not available in this server")
        if request.input_dir and self.server_folders_refused:
            raise RequestError("input_dir", self.server_folders_refused)
        return run_extras(request, self.upscalers, self.outputs, progress, self.faces)

    def img2img_batch(self, request: Img2ImgBatchRequest, progress: JobProgress) -> GenerationResult:
        """Each image of the input folder as its own img2img job (hooks, seed, saving as usual), one after another;
        an interrupt stops the batch after the image being made."""
        if self.server_folders_refused:
            raise RequestError("input_dir", self.server_folders_refused)
        items = plan_batch(request)
        samplers = self.hooks.sampler_specs()
        images, warnings, label = [], [], ""
        progress.parts = len(items)  # one progress over the folder: image k of N
        for number, item in enumerate(items):
            if progress.interrupt_requested:
                break
            progress.part = number
            result = self.generate_images(item_request(request, item, samplers, self._checkpoint_title), progress)
            images += write_results(result, item, self.outputs)
            warnings += [warning for warning in result.warnings if warning not in warnings]
            label = result.model_label
        return GenerationResult(images=images, interrupted=progress.interrupt_requested, model_label=label,
                                warnings=warnings)

    def _checkpoint_title(self, model_hash: str) -> str | None:
        entry = self.models.registry.find(model_hash)
        return entry.title if entry else None

    def txt2img(self, request: Txt2ImgRequest, progress: JobProgress) -> GenerationResult:
        if request.enable_hr:
            plan = HiresPlan.from_request(request, self.upscalers, self.hooks.sampler_specs(),
                                          self.options().hires_fix_refiner_pass)
            return self._run(request, progress, "txt2img", self._restoring(request, plan.make_batch),
                             plan.infotext_parameters(), plan.pass_steps)

        def make_batch(pipeline_for, noise, on_step, prompts, second):
            pipeline = pipeline_for("txt2img")
            arguments = prompts.pipeline_arguments(request.steps, len(noise), on_step)
            # flow pipelines (Flux, SD3) draw their own packed latents from the seeds' generators
            start = ({"generator": noise.sampler_generators(pipeline._execution_device)} if is_flow(pipeline)
                     else noise.first_pass_arguments(pipeline, request.width, request.height))
            with refined(second.refiner)(pipeline, arguments, request.steps, len(noise)) as arguments:
                return pipeline(
                    num_inference_steps=request.steps, **guidance_arguments(request, pipeline),
                    width=request.width, height=request.height, **start, output_type="pil", **arguments).images

        return self._run(request, progress, "txt2img", self._restoring(request, make_batch), {}, [request.steps])

    def img2img(self, request: Img2ImgRequest, progress: JobProgress) -> GenerationResult:
        plan = Img2ImgPlan.from_request(request)

        restore = self._face_restorer(request)

        def make_batch(pipeline_for, noise, on_step, prompts, second):
            return plan.make_batch(pipeline_for(plan.task), noise, on_step, prompts, second.refiner, restore)

        return self._run(request, progress, "img2img", make_batch, plan.infotext_parameters(), plan.pass_steps,
                         plan.crop)

    def _run(self, request: GenerationRequest, progress: JobProgress, output_kind: str, make_batch: MakeBatch,
             extra_parameters: dict, pass_steps: list[int],
             control_crop: tuple[int, int, int, int] | None = None) -> GenerationResult:
        """`make_batch(pipeline_for, noise, on_step, prompts)` makes one batch's images (see GenerationRun);
        `pass_steps`: the user's steps of each pipeline call of a batch, in order (the progress counts them);
        `control_crop`: the region "only masked" inpainting repaints (ControlNet maps are cropped to it)."""
        if request.restore_faces:  # before the model loads: a missing face model fails the job at once
            self._faces.model_path(request.face_restoration_model, "restore_faces")
        extra_samplers = self.hooks.sampler_specs()
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler, extra_samplers)
        seed = request.seed if request.seed != -1 else secrets.randbelow(2**32)
        subseed = request.subseed if request.subseed != -1 else secrets.randbelow(2**32)
        steps = StepCounter(pass_steps)
        options = self.job_options(request)
        preview_every = preview_period(options, steps.per_batch)
        progress.batches, progress.steps_per_batch = request.n_iter, steps.per_batch or 1
        with (self.models.lease(request.checkpoint) as (entry, model),  # never evicted while the job runs
              self._networks.prepare(request, model, entry.path) as prompts,  # LoRAs removed afterwards
              self._second_models(request, entry, model, prompts) as second,
              vae_tiling(prompts.vae or model.pipeline.vae,
                         self.models.settings.speed.tiles_vae(*output_size(request))) as tiled_vae,
              seamless([module for module in (getattr(model.pipeline, "unet", None), prompts.vae or model.pipeline.vae)
                        if module is not None],
                       request.tiling_axes if request.tiling else None),  # the cached model restored after
              prepared_controls(request, self.controlnets, model, entry.title,
                                getattr(request, "init_image", None), control_crop) as controls):
            check_skip_layer_guidance(request, model)
            if controls.any:  # the job's pipelines become ControlNet pipelines; each unit has its infotext
                make_batch = with_controls(make_batch, controls, getattr(request, "enable_hr", False), second.refiner)
                extra_parameters = {**extra_parameters, **controls.infotext}
            if model.family in FLOW_FAMILIES:  # their own samplers; Forge's guidance and shift keys
                check_flow_request(request, model.label)
                sampler, schedule = resolve_flow_sampler(request.sampler_name, request.scheduler, model.label)
                extra_parameters = {**extra_parameters, **flow_infotext(request, model)}
                prompts.warnings.extend(flow_warnings(request, model.family))
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
                previews=self.previews, preview_every=preview_every, second=second, options=options)
            run.run_batches(make_batch, seed, subseed)
        return GenerationResult(images=run.images, interrupted=progress.interrupt_requested, model_label=model.label,
                                warnings=prompts.warnings, detected_maps=controls.detected_maps())

    @contextmanager
    def _second_models(self, request: GenerationRequest, entry, model, prompts) -> Iterator[SecondModels]:
        """The job's refiner and hires checkpoint, each leased beside its checkpoint for the whole job."""
        with ExitStack() as stack:
            refiner = hires = None
            if request.refiner_checkpoint and request.refiner_switch_at < 1:  # switching at the end: base alone
                leased = stack.enter_context(self._leased(request, request.refiner_checkpoint, "refiner_checkpoint"))
                check_compatible(model, leased.model, leased.entry.title)
                refiner = Refiner(entry=leased.entry, model=leased.model, prompts=leased.prompts,
                                  switch_at=request.refiner_switch_at, keep_vae=prompts.vae is not None)
            hires_name = getattr(request, "hr_checkpoint_name", None) if getattr(request, "enable_hr", False) else None
            # The job's own checkpoint is not leased twice: preparing its networks again would apply its LoRAs twice.
            if hires_name and self._resolve(hires_name, "hr_checkpoint_name").title != entry.title:
                leased = stack.enter_context(self._leased(request, hires_name, "hr_checkpoint_name"))
                check_compatible(model, leased.model, leased.entry.title, "hr_checkpoint_name")
                hires = leased
            yield SecondModels(refiner=refiner, hires=hires)

    def _resolve(self, name: str, field_name: str):
        try:
            return self.models.resolve(name)
        except CheckpointError as error:
            raise RequestError(field_name, str(error).removeprefix("checkpoint: ")) from None

    @contextmanager
    def _leased(self, request: GenerationRequest, name: str, field_name: str) -> Iterator[LeasedModel]:
        found = self._resolve(name, field_name)
        with (self.models.lease(found.title) as (entry, model),
              self._networks.prepare(request, model, entry.path) as prompts):
            yield LeasedModel(entry=entry, model=model, prompts=prompts)

    def _image_prompts(self, request: GenerationRequest, seeds: list[int], first_index: int) -> list[tuple[str, str]]:
        """Each image's prompt and negative prompt: the request's, unless an extension chooses per image."""
        if request.image_prompts:  # a script's batch of different prompts (the prompt matrix)
            return [tuple(pair) for pair in request.image_prompts[first_index:first_index + len(seeds)]]
        if not self.hooks.image_prompt:
            return [(request.prompt, request.negative_prompt)] * len(seeds)
        return [self.hooks.run_image_prompt(request, image_seed, first_index + i) for i, image_seed in enumerate(seeds)]

    @property
    def _networks(self) -> Networks:
        if self.networks is None:
            raise RequestError("request", "this server was built without prompt networks")
        return self.networks

    def _face_restorer(self, request: GenerationRequest):
        """image -> image with its faces restored, when the request asks for it (A1111's Restore faces), else None."""
        if not request.restore_faces:
            return None
        faces, name = self._faces, request.face_restoration_model
        return lambda image: faces.restore(image, name)

    def _restoring(self, request: GenerationRequest, make_batch: MakeBatch) -> MakeBatch:
        """`make_batch` whose images get their faces restored, when the request asks for it."""
        restore = self._face_restorer(request)
        if restore is None:
            return make_batch
        return lambda *arguments: [restore(image) for image in make_batch(*arguments)]

    @property
    def _faces(self) -> FaceRestorers:
        if self.faces is None:
            raise RequestError("restore_faces", "face restoration is not available in this server")
        return self.faces


def with_controls(make_batch: MakeBatch, controls, hires_fix: bool, refiner=None) -> MakeBatch:
    """`make_batch` whose pipelines carry the job's ControlNet units (with the hires fix, its img2img pipeline is
    the second pass). A pass the refiner runs as a whole (the hires pass after it took over) gets none: the units
    steer the base model only, as in the extension."""
    def make(pipeline_for, *arguments):
        def controlled(task, *rest, **named):
            pipeline = pipeline_for(task, *rest, **named)
            leased = named.get("leased", rest[1] if len(rest) > 1 else None)
            if refiner is not None and leased is not None and leased.model is refiner.model:
                return pipeline
            return controls.wrap(pipeline, hires_fix and task == "img2img")
        return make_batch(controlled, *arguments)
    return make
