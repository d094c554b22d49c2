"""What an extension may do, and nothing more: the `api` object its `register(api)` receives.

The facade is versioned (API_VERSION, semantic: a new major number may break extensions, a new minor number
only adds). Everything an extension registers is kept here, tagged with the extension's name, so that a hook
that raises is reported against its extension and skipped while the job and the other extensions go on.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.core.errors import BatchSkipped, JobInterrupted
from backend.core.requests import MAX_PROMPT_CHARACTERS, RequestError, build_request
from backend.core.samplers import SamplerSpec, check_sampler_spec
from backend.core.scripts import Script, ScriptArg
from backend.models.construction import ModelConstruction

log = logging.getLogger(__name__)
API_VERSION = "1.3"  # 1.1 added on_image_prompt, SaveInfo.prompt / negative_prompt and building_models;
# 1.2 added add_script (the Script menu) and ScriptArg; 1.3 added save_grid
FORM_TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class Registered:
    extension: str
    value: Any


@dataclass(frozen=True)
class FormSection:
    """An accordion in the txt2img/img2img forms. `build(tab)` creates Gradio components inside it and returns
    {argument name: component}; their values reach hooks as request.extension_args[extension][argument]."""
    extension: str
    title: str
    build: Callable[[str], dict]
    tabs: tuple[str, ...] = FORM_TABS


@dataclass(frozen=True)
class ExtensionTab:
    extension: str
    title: str
    build: Callable[[], None]  # creates Gradio components; called inside the tab


@dataclass(frozen=True)
class StepInfo:
    """What an on-step hook sees: read-only facts about the running job."""
    request: Any
    step: int  # 1-based, within the current batch
    steps: int
    batch: int
    latents: Any  # the current latents tensor (read-only by convention: changing it is not supported)


@dataclass(frozen=True)
class ImagePromptInfo:
    """What an image-prompt hook sees: one image about to be generated."""
    request: Any
    seed: int  # this image's seed
    index: int  # the image's place in the job, 0-based over all batches
    prompt: str  # so far: the request's, or what an earlier extension chose for this image
    negative_prompt: str


@dataclass(frozen=True)
class SaveInfo:
    request: Any
    image: Any  # the PIL image about to be saved
    seed: int
    parameters: dict  # the infotext parameters so far (a copy)
    prompt: str = ""  # this image's prompt and negative prompt (API 1.1; an extension may have chosen them)
    negative_prompt: str = ""


@dataclass
class ExtensionHooks:
    """Everything registered by every extension, and the errors their hooks raised."""
    before_generate: list[Registered] = field(default_factory=list)
    image_prompt: list[Registered] = field(default_factory=list)
    on_step: list[Registered] = field(default_factory=list)
    after_generate: list[Registered] = field(default_factory=list)
    before_save: list[Registered] = field(default_factory=list)
    generation_wrappers: list[Registered] = field(default_factory=list)
    sections: list[FormSection] = field(default_factory=list)
    tabs: list[ExtensionTab] = field(default_factory=list)
    upscalers: dict[str, Registered] = field(default_factory=dict)
    samplers: dict[str, Registered] = field(default_factory=dict)
    routes: list[Registered] = field(default_factory=list)
    scripts: list[Registered] = field(default_factory=list)  # Script menu entries (Registered.value: Script)
    hook_errors: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report_failure(self, extension: str, kind: str, error: BaseException):
        message = f"{kind} hook failed: {type(error).__name__}: {error}"
        log.error("extension %s: %s\n%s", extension, message, traceback.format_exc())
        with self._lock:
            errors = self.hook_errors.setdefault(extension, [])
            errors.append(message)
            del errors[:-20]  # the latest few are enough to see what is wrong

    def run_before_generate(self, request):
        """Each hook may return a changed request (e.g. `request.model_copy(update=...)`) or None for no change."""
        for hook in list(self.before_generate):
            try:
                changed = hook.value(request)
            except Exception as error:  # an extension's bug must not fail the job
                self.report_failure(hook.extension, "before-generate", error)
                continue
            if changed is not None:
                if type(changed) is not type(request):
                    self.report_failure(hook.extension, "before-generate",
                                 TypeError(f"returned {type(changed).__name__}, not {type(request).__name__}"))
                    continue
                try:  # model_copy(update=...) does not validate; the job must not run on invalid values
                    request = build_request(type(request), changed.model_dump(), self.sampler_specs())
                except RequestError as error:
                    self.report_failure(hook.extension, "before-generate", error)
        return request

    def run_image_prompt(self, request, seed: int, index: int) -> tuple[str, str]:
        """The prompt and negative prompt of one image: the request's, as each hook in turn changes them (a hook
        returns {"prompt": ..., "negative_prompt": ...}, either key optional, or None for no change)."""
        prompt, negative_prompt = request.prompt, request.negative_prompt
        for hook in list(self.image_prompt):
            try:
                changed = hook.value(ImagePromptInfo(request, seed, index, prompt, negative_prompt))
                if changed is None:
                    continue
                if not isinstance(changed, dict) or set(changed) - {"prompt", "negative_prompt"} or not all(
                        isinstance(value, str) for value in changed.values()):
                    raise TypeError("must return None or a dict of 'prompt' and/or 'negative_prompt' strings")
                too_long = [key for key, value in changed.items() if len(value) > MAX_PROMPT_CHARACTERS]
                if too_long:
                    raise ValueError(f"{too_long[0]} longer than {MAX_PROMPT_CHARACTERS} characters")
            except Exception as error:  # an extension's bug must not fail the job: this image keeps its prompt
                self.report_failure(hook.extension, "image-prompt", error)
                continue
            prompt, negative_prompt = changed.get("prompt", prompt), changed.get("negative_prompt", negative_prompt)
        return prompt, negative_prompt

    def sampler_specs(self) -> dict[str, SamplerSpec]:
        return {name: registered.value for name, registered in self.samplers.items()}

    def run_on_step(self, info: StepInfo):
        for hook in list(self.on_step):
            try:
                hook.value(info)
            except Exception as error:
                self.report_failure(hook.extension, "on-step", error)

    def run_after_generate(self, request, result):
        for hook in list(self.after_generate):
            try:
                hook.value(request, result)
            except Exception as error:
                self.report_failure(hook.extension, "after-generate", error)

    def run_before_save(self, info: SaveInfo) -> dict:
        """Infotext keys the hooks add (a hook returns a dict of them, or None)."""
        added: dict = {}
        for hook in list(self.before_save):
            try:
                keys = hook.value(info)
            except Exception as error:
                self.report_failure(hook.extension, "before-save", error)
                continue
            if keys:
                added.update({str(key): value for key, value in dict(keys).items()})
        return added

    def wrap_generation(self, run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Compose generation wrappers: each gets (request, run) and returns a result, calling `run` as often as
        it likes (an X/Y/Z plot runs one generation per cell). A wrapper that raises is skipped."""
        for wrapper in reversed(list(self.generation_wrappers)):
            run = self._guarded_wrapper(wrapper, run)
        return run

    def _guarded_wrapper(self, wrapper: Registered, inner: Callable):
        def run(request):
            def generate(sub_request):
                try:
                    return inner(sub_request)
                except Exception as error:  # the app's own failure (bad cell value, interrupt): not the wrapper's
                    error.raised_by_generation = True
                    raise

            try:
                return wrapper.value(request, generate)
            except (JobInterrupted, BatchSkipped, RequestError):
                raise  # the user's interrupt or bad input (InputError included), not a bug in the extension
            except Exception as error:
                if getattr(error, "raised_by_generation", False):
                    raise
                self.report_failure(wrapper.extension, "generation", error)
                return inner(request)  # the job still gives the user their image
        return run


class InputError(RequestError):
    """What an extension raises for bad user input: the job fails with this message, as for the app's own
    fields. The message may start with the field it is about: "extension_args.my_ext.count: must be > 0"."""

    def __init__(self, message: str):
        field, _, rest = message.partition(": ")
        if not rest or " " in field:
            field, rest = "extension_args", message
        super().__init__(field, rest)


class ExtensionAPI:
    """The object an extension's `register(api)` receives. See extensions/README.md for examples."""
    version = API_VERSION
    InputError = InputError  # raise api.InputError("extension_args.<name>.<argument>: what is wrong")
    ScriptArg = ScriptArg  # an argument of a Script menu script (API 1.2)

    def __init__(self, name: str, hooks: ExtensionHooks, outputs_dir=None,
                 construction: ModelConstruction | None = None, grid_saver: Callable | None = None):
        self.name = name
        self._hooks = hooks
        self.outputs_dir = outputs_dir  # where the app saves images
        self._construction = construction or ModelConstruction()
        self._grid_saver = grid_saver

    def save_grid(self, image, request, infotext: str):
        """(API 1.3) Save a grid the extension drew (a PIL image) as the app saves its own: only when `request`
        saves images and the grid_save option is on (with the request's override_settings), in grid_format with
        the infotext, in the grid folder of the request's tab (outdir_grids, outdir_<tab>_grids or
        <outputs>/<tab>-grids). Returns the saved file's path, or None when nothing was saved."""
        return self._grid_saver(image, request, infotext) if self._grid_saver else None

    def building_models(self):
        """A context manager to hold while building torch modules (or calling a loader such as
        `from_pretrained`): the app's loaders build theirs under the same lock, because some of them patch
        module construction for the whole process while they run."""
        return self._construction.building()

    # --- user interface ---------------------------------------------------------------------------------
    def add_tab(self, title: str, build: Callable[[], None]):
        self._hooks.tabs.append(ExtensionTab(self.name, title, build))

    def add_section(self, title: str, build: Callable[[str], dict], tabs: tuple[str, ...] = FORM_TABS):
        unknown = set(tabs) - set(FORM_TABS)
        if unknown:
            raise ValueError(f"add_section: tabs must be among {FORM_TABS}; got {sorted(unknown)}")
        self._hooks.sections.append(FormSection(self.name, title, build, tuple(tabs)))

    # --- generation hooks -------------------------------------------------------------------------------
    def on_before_generate(self, hook: Callable[[Any], Any]):
        """hook(request) -> a changed request or None. Runs before the job starts."""
        self._hooks.before_generate.append(Registered(self.name, hook))

    def on_image_prompt(self, hook: Callable[[ImagePromptInfo], dict | None]):
        """hook(info) -> {"prompt": ..., "negative_prompt": ...} (either optional) or None, for every image before
        its batch is generated: each image may get its own prompt (API 1.1)."""
        self._hooks.image_prompt.append(Registered(self.name, hook))

    def on_step(self, hook: Callable[[StepInfo], None]):
        self._hooks.on_step.append(Registered(self.name, hook))

    def on_after_generate(self, hook: Callable[[Any, Any], None]):
        """hook(request, result) after the job's images are saved."""
        self._hooks.after_generate.append(Registered(self.name, hook))

    def on_before_save(self, hook: Callable[[SaveInfo], dict | None]):
        """hook(info) -> extra infotext keys for this image (or None)."""
        self._hooks.before_save.append(Registered(self.name, hook))

    def wrap_generation(self, wrapper: Callable[[Any, Callable], Any]):
        """wrapper(request, run) -> GenerationResult; `run(request)` generates (and saves) as usual."""
        self._hooks.generation_wrappers.append(Registered(self.name, wrapper))

    def add_script(self, title: str, args: list[ScriptArg], run: Callable[[Any], Any],
                   tabs: tuple[str, ...] = FORM_TABS):
        """A Script menu entry (API 1.2): `args` in the order A1111 clients pass script_args; `run(job)` gets a
        ScriptJob (job.request, job.args checked against `args`, job.generate(request) -> result, job.build,
        job.grid_result, job.image_result) and returns the GenerationResult."""
        unknown = set(tabs) - set(FORM_TABS)
        if unknown:
            raise ValueError(f"add_script: tabs must be among {FORM_TABS}; got {sorted(unknown)}")
        if any(registered.value.name == title.lower() for registered in self._hooks.scripts):
            raise ValueError(f"script {title!r} is already registered")
        self._hooks.scripts.append(Registered(self.name, Script(title, tuple(args), run, tuple(tabs), self.name)))

    # --- registries -------------------------------------------------------------------------------------
    def register_upscaler(self, name: str, upscale: Callable[[Any, tuple[int, int]], Any]):
        """upscale(PIL image, (width, height)) -> PIL image of that size. Listed with the other upscalers."""
        self._claim(self._hooks.upscalers, name, "upscaler", upscale)

    def register_sampler(self, name: str, scheduler_class: str, options: dict | None = None,
                         default_schedule: str = "Uniform"):
        """A sampler name backed by a diffusers scheduler class (by its name) with config `options`; it appears in
        the sampler lists, the REST API's /samplers, and is accepted in requests."""
        spec = SamplerSpec(scheduler_class, dict(options or {}), default_schedule)
        check_sampler_spec(name, spec)
        self._claim(self._hooks.samplers, name, "sampler", spec)

    def add_api_route(self, path: str, endpoint: Callable, methods: tuple[str, ...] = ("GET",)):
        """Served at /extensions/<extension name>/<path>, behind the same auth as the REST API."""
        self._hooks.routes.append(Registered(self.name, (path.lstrip("/"), endpoint, tuple(methods))))

    def _claim(self, table: dict, name: str, what: str, value):
        if name in table:
            raise ValueError(f"{what} {name!r} is already registered by extension {table[name].extension}")
        table[name] = Registered(self.name, value)
