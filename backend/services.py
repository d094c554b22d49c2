"""Wiring of the backend services, done once by app.py (and by tests) and passed to the UI and API."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.controlnet.builtin_controlnet import builtin_when
from backend.controlnet.service import ControlNets
from backend.core.errors import UserError, is_out_of_memory
from backend.core.options import Options
from backend.core.options_store import OptionsStore
from backend.core.requests import (
    ExtrasRequest,
    GenerationRequest,
    Img2ImgRequest,
    JobRequest,
    RequestError,
    build_request,
)
from backend.core.settings import Settings
from backend.core.ui_defaults import UiDefaults
from backend.generation.generator import Generator
from backend.generation.previews import PreviewRenderer
from backend.jobs.history import JobHistory
from backend.jobs.outputs import OutputStore
from backend.jobs.pool_queue import PoolJobQueue, WorkerPool, WorkerState
from backend.jobs.queue import JobQueue
from backend.models.component_choices import ComponentChoices
from backend.models.construction import ModelConstruction
from backend.models.devices import choose_device, choose_dtype, choose_flow_dtype
from backend.models.flow_loader import ComponentFolders
from backend.models.hashes import HashCache
from backend.models.loader import CheckpointLoader
from backend.models.manager import ModelManager
from backend.models.registry import ModelRegistry
from backend.plugins.installer import ExtensionInstaller
from backend.plugins.loader import Extensions
from backend.prompts.context import Networks
from backend.prompts.styles import StyleStore
from backend.upscale.face_restoration import FaceRestorers
from backend.upscale.service import Upscalers

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    construction: ModelConstruction
    models: ModelManager
    outputs: OutputStore
    generator: Generator
    jobs: JobQueue
    history: JobHistory
    upscalers: Upscalers
    faces: FaceRestorers
    networks: Networks
    extensions: Extensions
    extension_installer: ExtensionInstaller
    styles: StyleStore
    options: OptionsStore
    ui_defaults: UiDefaults
    controlnets: ControlNets

    def build_request(self, request_class: type[JobRequest], values: dict[str, Any]) -> JobRequest:
        """The one way form values, an API body or an MCP call become a typed request: validated, with the samplers
        extensions registered accepted besides the built-in ones. A RequestError names the field."""
        if issubclass(request_class, GenerationRequest):  # config.json's noise options, unless the values set them
            stored = self.options.current
            values = {"eta_noise_seed_delta": stored.eta_noise_seed_delta, "randn_source": stored.randn_source,
                      **values}
        request = build_request(request_class, values, self.extensions.hooks.sampler_specs())
        if getattr(request, "override_settings", None):  # an outdir_* override may not leave the outputs root
            try:
                self.outputs.check_folders(self.generator.job_options(request))
            except UserError as error:
                raise RequestError(f"override_settings.{error.field}", error.message) from None
        if getattr(request, "styles", None):
            self.styles.resolve(request.styles)  # an unknown style is refused before the job is queued
        return self.generator.check_script(request)  # so is an unknown script or a bad script argument

    def set_options(self, changes: dict[str, Any]) -> list[str]:
        """Validate and save user options (OptionError names a bad key). A new sd_model_checkpoint is loaded
        first: when it fails (CheckpointError) nothing is changed and the previous model stays."""
        changes = dict(changes)
        self.options.validate(changes)
        if changes.get("sd_model_checkpoint") is not None:
            changes["sd_model_checkpoint"] = self.models.select(str(changes["sd_model_checkpoint"])).title
        return self.options.update(changes)

    def select_checkpoint(self, query: str):
        """Load a checkpoint and make it the default, remembered in config.json as A1111 does."""
        entry = self.models.select(query)
        self.options.update({"sd_model_checkpoint": entry.title})
        return entry

    def worker_states(self) -> list[WorkerState]:
        """What runs jobs: the pool's workers, or this process's one worker ("local")."""
        if isinstance(self.jobs, PoolJobQueue):
            return self.jobs.worker_states()
        running = self.jobs.running()
        return [WorkerState(id="local", node=socket.gethostname(), pid=os.getpid(),
                            gpu=str(self.models.device) if self.models.device.type != "cpu" else None,
                            state="busy" if running else "idle", job=running.id if running else None,
                            models=self.models.loaded_titles(), jobs_done=self.jobs.jobs_run,
                            model_loads=self.models.stats.loads)]

    def close(self, timeout: float = 30) -> bool:
        """Stop the jobs (the running one at its next step, recorded as interrupted) and close the history. True
        when the worker stopped within `timeout` seconds."""
        stopped = self.jobs.stop(timeout)
        self.history.close()
        return stopped


@dataclass
class GenerationServices:
    """What runs jobs: built by the server for its own worker, and by each pool worker process for itself."""
    construction: ModelConstruction
    models: ModelManager
    generator: Generator
    upscalers: Upscalers
    faces: FaceRestorers
    networks: Networks
    extensions: Extensions
    styles: StyleStore
    controlnets: ControlNets

    def run_attempt(self, request, progress):
        """One attempt at a job. An attempt that runs out of memory is retried, so the images it already saved
        are removed: the outputs folder then holds each image once, as the job's result does."""
        with self.generator.outputs.saves_undone_on(is_out_of_memory):
            return self.generator.generate(request, progress)

    def free_caches(self):
        """Out of memory: drop every model no job holds (checkpoints, upscalers, face restoration, ControlNets),
        then let the GPU allocator give the memory back."""
        self.upscalers.models.clear()
        self.faces.clear()
        self.controlnets.clear()
        self.models.free_unused()


def build_generation_services(settings: Settings, options: Callable[[], Options], outputs: OutputStore,
                              startup_checkpoint: str | None = None) -> GenerationServices:
    """The model cache, the generator and what it uses, from the same Settings in any process. `options()`: the
    user options in effect; `outputs`: where images are saved (a pool worker passes a store that defers its writes
    to the server)."""
    device = choose_device(settings.device)
    dtype = choose_dtype(settings.precision, device)
    hashes = HashCache(settings.cache_dir / "hashes.json")
    registry = ModelRegistry(settings.checkpoints_dir, hashes, settings.unet_dir)
    registry.refresh()  # scan (and hash) once, before any thread asks for the list
    construction = ModelConstruction()  # every loader builds its modules under this one lock
    components = ComponentFolders(settings.text_encoder_dir, settings.vae_dir)  # Flux/SD3 separate parts
    loader = CheckpointLoader(construction, components, choose_flow_dtype(settings.precision, device, dtype))
    models = ModelManager(settings, registry, loader, device, dtype,
                          ComponentChoices(settings.cache_dir / "components.json", components))
    models.startup_checkpoint = settings.startup_checkpoint or startup_checkpoint
    previews = PreviewRenderer(settings.models_dir / "VAE-approx", device, dtype, settings.cache_dir / "previews.json",
                               construction)
    upscalers = Upscalers(settings, device, dtype, construction)  # model files are scanned on first use, not here
    faces = FaceRestorers(settings.models_dir, device, construction)  # a model file is loaded on first use
    networks = Networks(settings.lora_dir, settings.embeddings_dir, settings.vae_dir, settings.checkpoints_dir, hashes,
                        construction)
    generator: Generator | None = None

    def save_extension_grid(image, request, infotext: str):  # api.save_grid; `generator` is bound below
        job_options = generator.job_options(request)
        if not (request.save_images and job_options.grid_save):
            return None
        kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        return outputs.save_grid(image, kind, infotext, "grid", job_options)

    extensions = Extensions(settings.extensions_dir, settings.extensions_state_file, settings.outputs_dir,
                            construction, save_extension_grid)
    extensions.load_all()  # a broken extension is recorded and skipped; the app starts regardless
    upscalers.from_extensions = extensions.hooks.upscalers
    styles = StyleStore(settings.styles_file)
    controlnets = ControlNets(settings.controlnet_dir, settings.controlnet_preprocessor_dir,
                              ipadapter_dir=settings.ipadapter_dir, clip_vision_dir=settings.clip_vision_dir,
                              store=models.modules,
                              builtin=builtin_when(lambda: any(entry.builtin for entry in registry.entries)))
    generator = Generator(models, outputs, previews, options, upscalers, networks, extensions.hooks,
                          server_folders_refused=settings.server_folders_refused, styles=styles, faces=faces,
                          controlnets=controlnets)
    return GenerationServices(construction=construction, models=models, generator=generator, upscalers=upscalers,
                              faces=faces, networks=networks, extensions=extensions, styles=styles,
                              controlnets=controlnets)


def build_services(settings: Settings, start_worker: bool = True, pool: WorkerPool | None = None) -> Services:
    """`start_worker=False`: the caller starts `jobs` later (app.py does, once the model libraries are imported,
    so no job imports them from another thread at the same time). `pool`: jobs run on these workers in other
    processes (--workers, --ray-address) instead of a thread of this one, which then loads no model itself."""
    options = OptionsStore(settings.options_file, settings.option_overrides)
    outputs = OutputStore(settings.outputs_dir, options=lambda: options.current,
                          folders_inside_root=settings.reachable_from_network)
    options.add_check(outputs.check_folders)
    parts = build_generation_services(settings, lambda: options.current, outputs,
                                      startup_checkpoint=options.current.sd_model_checkpoint)
    models = parts.models
    models.loads_here = pool is None
    options.on_change(lambda current, _changed: apply_options(current, settings, models))
    apply_options(options.current, settings, models)
    history = JobHistory(settings.outputs_dir / "history.sqlite3")
    interrupted = history.mark_unfinished_interrupted()
    if interrupted:
        log.warning("%d job(s) were still queued or running when the server last stopped; marked interrupted",
                    interrupted)
    if pool is None:
        jobs = JobQueue(parts.run_attempt, history, on_out_of_memory=parts.free_caches)
    else:
        jobs = PoolJobQueue(pool, lambda request: _checkpoint_of(request, models), parts.generator.job_options,
                            outputs, history)
    if start_worker:
        jobs.start()
    return Services(settings=settings, construction=parts.construction, models=models, outputs=outputs,
                    generator=parts.generator, jobs=jobs, history=history, upscalers=parts.upscalers,
                    faces=parts.faces, networks=parts.networks, extensions=parts.extensions, styles=parts.styles,
                    extension_installer=ExtensionInstaller(settings.extensions_dir,
                                                           settings.extension_install_refused,
                                                           local=not settings.reachable_from_network),
                    options=options, ui_defaults=UiDefaults(settings.ui_defaults_file),
                    controlnets=parts.controlnets)


def _checkpoint_of(request, models: ModelManager) -> str | None:
    """The title of the checkpoint a job runs with (None: it needs none, e.g. an upscale)."""
    if isinstance(request, ExtrasRequest):
        return None
    chosen = (getattr(request, "override_settings", None) or {}).get("sd_model_checkpoint")
    return models.resolve(str(chosen) if chosen else None).title


def apply_options(options: Options, settings: Settings, models: ModelManager):
    """The options services hold as state (the rest are read by each job when it starts)."""
    models.max_models = settings.max_models_in_memory or options.sd_checkpoints_limit
