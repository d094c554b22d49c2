"""Controls and result area shared by the txt2img and img2img tabs, and the loop that runs a job:
request -> job queue -> live progress and preview -> gallery and infotext."""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from backend.core.requests import (
    BATCH_COUNT_RANGE,
    BATCH_SIZE_RANGE,
    CFG_RANGE,
    MAX_PROMPT_CHARACTERS,
    SEED_RESIZE_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    Txt2ImgRequest,
)
from backend.core.samplers import SAMPLERS, SCHEDULE_NAMES
from backend.services import Services
from ui.job_runner import JobView, TabJobRunner
from ui.refiner_controls import refiner_fields

PRIVATE = {"api_visibility": "private"}  # UI events are not API endpoints or MCP tools


@dataclass
class GenerationForm:
    prefix: str
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    token_counter: gr.HTML | None = None
    negative_token_counter: gr.HTML | None = None
    progress: gr.HTML | None = None
    gallery: gr.Gallery | None = None
    infotext: gr.Textbox | None = None
    job_id: gr.State | None = None
    results: gr.State | None = None  # [(path, seed, infotext)] of the images shown, in gallery order
    selected: gr.State | None = None  # index of the selected image
    selected_path: gr.State | None = None  # file of the selected image, for "Send to ..."
    send_to_img2img: gr.Button | None = None
    send_to_inpaint: gr.Button | None = None
    send_to_upscale: gr.Button | None = None
    extra_fields: dict = field(default_factory=dict)  # request field -> component, beyond the common ones
    extension_inputs: dict = field(default_factory=dict)  # extension -> {argument: component} of its section
    styles: object | None = None  # ui.styles.StylePicker under Generate, when the tab has one
    scripts: object | None = None  # ui.script_menu.ScriptMenu, A1111's "Script" dropdown
    seed_extras: dict = field(default_factory=dict)  # "Extra" seed row and tiling: request field -> component
    show_seed_extras: gr.Checkbox | None = None  # A1111's "Extra" checkbox beside the seed
    random_subseed: gr.Button | None = None
    reuse_subseed: gr.Button | None = None
    refiner: dict = field(default_factory=dict)  # the "Refiner" accordion: request field -> component
    controlnet: object | None = None  # ui.controlnet_units.ControlNetControls, the "ControlNet" accordion

    @property
    def inputs(self) -> set:
        return {self.prompt, self.negative_prompt, self.sampler, self.schedule, self.steps, self.width, self.height,
                self.batch_count, self.batch_size, self.cfg_scale, self.seed, *self.seed_extras.values(),
                *self.refiner.values(),
                *([self.show_seed_extras] if self.show_seed_extras else []),
                *(c for arguments in self.extension_inputs.values() for c in arguments.values()),
                *([self.styles.dropdown] if self.styles else []), *(self.scripts.inputs if self.scripts else ()),
                *(self.controlnet.inputs if self.controlnet else ())}

    def seed_extra_fields(self, values: dict) -> dict:
        """Variation seed, seed resize and tiling; the variation options count only while "Extra" is ticked, as
        in A1111."""
        extras = self.seed_extras
        fields = {}
        if "tiling" in extras:
            fields |= {"tiling": bool(values[extras["tiling"]]), "tiling_axes": values[extras["tiling_axes"]]}
        if self.show_seed_extras is not None and values[self.show_seed_extras]:
            subseed = values[extras["subseed"]]
            fields |= {"subseed": -1 if subseed is None else int(subseed),
                       "subseed_strength": float(values[extras["subseed_strength"]]),
                       "seed_resize_from_w": int(values[extras["seed_resize_from_w"]]),
                       "seed_resize_from_h": int(values[extras["seed_resize_from_h"]])}
        return fields

    def common_fields(self, values: dict, model) -> dict:
        """`model`: the page's ModelControls (checkpoint, VAE, clip skip)."""
        seed = values[self.seed]
        return {"prompt": values[self.prompt], "negative_prompt": values[self.negative_prompt],
                "sampler_name": values[self.sampler], "scheduler": values[self.schedule],
                "steps": int(values[self.steps]), "cfg_scale": float(values[self.cfg_scale]),
                "width": int(values[self.width]), "height": int(values[self.height]),
                "seed": -1 if seed is None else int(seed), "batch_size": int(values[self.batch_size]),
                "n_iter": int(values[self.batch_count]),
                **model.request_fields(values, txt2img=self.prefix == "txt2img"),
                "styles": list(values[self.styles.dropdown] or []) if self.styles else [],
                **(self.scripts.request_fields(values) if self.scripts else {}),
                **self.seed_extra_fields(values), **refiner_fields(values, self.refiner),
                **(self.controlnet.request_fields(values) if self.controlnet else {}),
                "extension_args": {extension: {argument: values[component] for argument, component in args.items()}
                                   for extension, args in self.extension_inputs.items()}}


def build_prompt_row(prefix: str, under_generate: Callable[[], object] | None = None) -> dict:
    """`under_generate`: builds what goes below Generate/Interrupt/Skip (the Styles picker); its result is the
    returned "styles"."""
    with gr.Row():
        with gr.Column(scale=6):
            # each counter shares a positioned column with its box, so ui/style.css can put it in the box's corner
            with gr.Column(elem_classes="prompt-with-counter"):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt", placeholder="Prompt",
                                    max_length=MAX_PROMPT_CHARACTERS)
                token_counter = gr.HTML(render_token_count(0, 75), elem_id=f"{prefix}_token_counter",
                                        elem_classes="token-counter-box")
            with gr.Column(elem_classes="prompt-with-counter"):
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt",
                                      max_length=MAX_PROMPT_CHARACTERS)
                negative_counter = gr.HTML(render_token_count(0, 75), elem_id=f"{prefix}_negative_token_counter",
                                           elem_classes="token-counter-box")
        with gr.Column(scale=1, min_width=200):  # room for "Interrupt" and "Skip" side by side
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", min_width=70)
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip", min_width=70)
            styles = under_generate() if under_generate else None
    return dict(prompt=prompt, negative_prompt=negative, generate=generate, interrupt=interrupt, skip=skip,
                token_counter=token_counter, negative_token_counter=negative_counter, styles=styles)


def render_token_count(used: int, limit: int, t5: tuple[int, int] | None = None) -> str:
    """A1111's CLIP count; with `t5` (Flux/SD3) T5's count and room too, as Forge shows it."""
    t5_count = f" · T5 {t5[0]}/{t5[1]}" if t5 else ""
    return f'<div class="token-counter" style="text-align:right;opacity:0.8">{used}/{limit}{t5_count}</div>'


def prompt_token_counts(services: Services, text: str | None, steps) -> str:
    """The counter beside a prompt box for the selected model (T5's count only once a Flux/SD3 model is loaded)."""
    text, steps = text or "", int(steps or 1)
    return render_token_count(*services.networks.token_counter(text, steps),
                              t5=services.networks.t5_token_counter(text, steps, services.models.loaded(None)))



def build_sampling_controls(prefix: str, size: tuple[int, int] | None = None, extra_samplers=()) -> dict:
    """`size`: the selected model's training size, when it declares one (else A1111's 512x512);
    `extra_samplers`: names of samplers extensions registered."""
    defaults = Txt2ImgRequest()
    default_width, default_height = size or (defaults.width, defaults.height)
    with gr.Row():
        sampler = gr.Dropdown(label="Sampling method", choices=[*SAMPLERS, *extra_samplers],
                              value=defaults.sampler_name,
                              elem_id=f"{prefix}_sampling")
        schedule = gr.Dropdown(label="Schedule type", choices=list(SCHEDULE_NAMES), value=defaults.scheduler,
                               elem_id=f"{prefix}_scheduler")
    steps = gr.Slider(label="Sampling steps", minimum=STEPS_RANGE[0], maximum=STEPS_RANGE[1], step=1,
                      value=defaults.steps, elem_id=f"{prefix}_steps")
    with gr.Row():
        width = gr.Slider(label="Width", minimum=SIZE_RANGE[0], maximum=SIZE_RANGE[1], step=8, value=default_width,
                          elem_id=f"{prefix}_width")
        height = gr.Slider(label="Height", minimum=SIZE_RANGE[0], maximum=SIZE_RANGE[1], step=8,
                           value=default_height, elem_id=f"{prefix}_height")
    with gr.Row():
        batch_count = gr.Slider(label="Batch count", minimum=BATCH_COUNT_RANGE[0], maximum=BATCH_COUNT_RANGE[1],
                                step=1, value=1, elem_id=f"{prefix}_batch_count")
        batch_size = gr.Slider(label="Batch size", minimum=BATCH_SIZE_RANGE[0], maximum=BATCH_SIZE_RANGE[1], step=1,
                               value=1, elem_id=f"{prefix}_batch_size")
    cfg_scale = gr.Slider(label="CFG scale", minimum=CFG_RANGE[0], maximum=CFG_RANGE[1], step=0.5,
                          value=defaults.cfg_scale, elem_id=f"{prefix}_cfg_scale")
    with gr.Row():
        tiling = gr.Checkbox(label="Tiling", value=False, elem_id=f"{prefix}_tiling", scale=0, min_width=90)
        tiling_axes = gr.Radio(label="Tiling axes", choices=[("X and Y", "XY"), ("X only", "X"), ("Y only", "Y")],
                               value="XY", elem_id=f"{prefix}_tiling_axes", show_label=False, scale=3)
    with gr.Row(elem_id=f"{prefix}_seed_row"):
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{prefix}_seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{prefix}_random_seed", scale=0, min_width=50)
        reuse_seed = gr.Button("♻️", elem_id=f"{prefix}_reuse_seed", scale=0, min_width=50)
        show_extras = gr.Checkbox(label="Extra", value=False, elem_id=f"{prefix}_subseed_show", scale=0,
                                  min_width=80)
    extras = build_seed_extras(prefix)
    show_extras.change(lambda shown: gr.Group(visible=shown), inputs=show_extras, outputs=extras.pop("group"),
                       show_progress="hidden", queue=False, **PRIVATE)
    random_subseed, reuse_subseed = extras.pop("random_subseed"), extras.pop("reuse_subseed")
    return dict(sampler=sampler, schedule=schedule, steps=steps, width=width, height=height,
                batch_count=batch_count, batch_size=batch_size, cfg_scale=cfg_scale, seed=seed,
                random_seed=random_seed, reuse_seed=reuse_seed, show_seed_extras=show_extras,
                random_subseed=random_subseed, reuse_subseed=reuse_subseed,
                seed_extras={**extras, "tiling": tiling, "tiling_axes": tiling_axes})


def build_seed_extras(prefix: str) -> dict:
    """A1111's variation seed row, shown by "Extra": Variation seed with 🎲/♻️, Variation strength, and
    "Resize seed from width/height" (0: off)."""
    with gr.Group(visible=False, elem_id=f"{prefix}_seed_extras") as group:
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{prefix}_subseed", scale=4)
            random_subseed = gr.Button("🎲", elem_id=f"{prefix}_random_subseed", scale=0, min_width=50)
            reuse_subseed = gr.Button("♻️", elem_id=f"{prefix}_reuse_subseed", scale=0, min_width=50)
            strength = gr.Slider(label="Variation strength", minimum=0, maximum=1, step=0.01, value=0,
                                 elem_id=f"{prefix}_subseed_strength", scale=4)
        with gr.Row():
            resize_w = gr.Slider(label="Resize seed from width", minimum=0, maximum=SEED_RESIZE_RANGE[1], step=8,
                                 value=0, elem_id=f"{prefix}_seed_resize_from_w")
            resize_h = gr.Slider(label="Resize seed from height", minimum=0, maximum=SEED_RESIZE_RANGE[1], step=8,
                                 value=0, elem_id=f"{prefix}_seed_resize_from_h")
    return {"group": group, "random_subseed": random_subseed, "reuse_subseed": reuse_subseed, "subseed": subseed,
            "subseed_strength": strength, "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h}


def build_restore_faces(prefix: str) -> gr.Checkbox:
    """A1111's "Restore faces" checkbox (the face restorer is the face_restoration_model setting, GFPGAN)."""
    return gr.Checkbox(label="Restore faces", value=False, elem_id=f"{prefix}_restore_faces")


def build_results(form: GenerationForm):
    form.progress = gr.HTML(elem_id=f"{form.prefix}_progress")
    form.gallery = gr.Gallery(label="Output", elem_id=f"{form.prefix}_gallery", columns=2, height=480,
                              interactive=False, object_fit="contain")
    form.infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                               elem_id=f"{form.prefix}_infotext")
    form.job_id, form.results, form.selected = gr.State(None), gr.State([]), gr.State(0)
    form.selected_path = gr.State(None)


def served_path(services: Services, image) -> str | None:
    """The image's file when Gradio may serve it (it lies in the outputs folder), else None: img2img Batch writes
    to a folder the user chose, and unsaved images have no file."""
    if not image.path:
        return None
    return image.path if Path(image.path).resolve().is_relative_to(services.settings.outputs_dir.resolve()) else None


def shown_image(services: Services, image):
    """What the gallery shows: the served file, else the image itself (from its PNG bytes)."""
    return served_path(services, image) or Image.open(io.BytesIO(image.png))


def wire_generation(services: Services, form: GenerationForm, inputs: set,
                    build_request: Callable[[dict], object]):
    """Generate/Interrupt/Skip/seed buttons and gallery selection. `build_request` turns the input
    values into a typed request or raises RequestError."""
    outputs = [form.progress, form.gallery, form.infotext, form.job_id, form.results, form.selected,
               form.selected_path]

    previews_shown: dict[str, int] = {}  # job id -> the preview step the tab shows

    def started(job) -> dict:
        previews_shown[job.id] = 0
        return {form.job_id: job.id}

    def running(job) -> dict:
        if job.progress.preview is None or job.progress.preview_step == previews_shown.get(job.id):
            return {}
        previews_shown[job.id] = step = job.progress.preview_step
        return {form.gallery: [(job.progress.preview, f"Preview, step {step}")]}

    def failed(job) -> dict:
        previews_shown.pop(job.id, None)
        return {form.job_id: None}

    def finished(job) -> dict:
        previews_shown.pop(job.id, None)
        images = job.result.shown_images
        # ControlNet's detected maps follow the images, as the extension shows them
        maps = [(Image.open(io.BytesIO(png)), "Detected map") for png in getattr(job.result, "detected_maps", [])]
        return {
            form.job_id: None,
            form.gallery: [(shown_image(services, image), f"Seed {image.seed}") for image in images] + maps,
            form.results: [(served_path(services, image), image.seed, image.infotext, image.subseed)
                           for image in images],
            form.infotext: images[0].infotext if images else "", form.selected: 0,
            form.selected_path: served_path(services, images[0]) if images else None,
        }

    runner = TabJobRunner(services, JobView(form.progress, started, running, failed, finished))

    def run(values: dict, http: gr.Request):
        yield from runner.run(lambda: build_request(values), http)

    def on_select(shown: list, event: gr.SelectData):
        if not shown or event.index is None or event.index >= len(shown):
            return gr.update(), 0, None
        path, _, infotext, *_ = shown[event.index]
        return infotext, event.index, path

    def reuse(shown: list, index: int):
        return shown[index][1] if shown and index < len(shown) else -1

    # Our own job queue orders the work, so Gradio need not serialise these events.
    # "multiple": a click while the tab's job runs is not dropped; it queues its job (see ui/tab_jobs.py).
    form.generate.click(run, inputs=inputs, outputs=outputs, concurrency_limit=None, trigger_mode="multiple",
                        **PRIVATE)

    # No outputs, so the handlers return nothing: a returned value makes Gradio warn on every click.
    def interrupt(job: str | None):
        if job:
            services.jobs.interrupt(job)

    def skip(job: str | None):
        if job:
            services.jobs.skip(job)

    form.interrupt.click(interrupt, inputs=form.job_id, concurrency_limit=None, **PRIVATE)
    form.skip.click(skip, inputs=form.job_id, concurrency_limit=None, **PRIVATE)
    form.gallery.select(on_select, inputs=form.results, outputs=[form.infotext, form.selected, form.selected_path],
                        **PRIVATE)
    form.random_seed.click(lambda: -1, outputs=form.seed, **PRIVATE)

    def count(text: str | None, steps) -> str:
        return prompt_token_counts(services, text, steps)

    for box, counter in ((form.prompt, form.token_counter), (form.negative_prompt, form.negative_token_counter)):
        box.change(count, inputs=[box, form.steps], outputs=counter, trigger_mode="always_last",
                   show_progress="hidden", queue=False, **PRIVATE)
    form.reuse_seed.click(reuse, inputs=[form.results, form.selected], outputs=form.seed, **PRIVATE)
    if form.random_subseed is not None:
        def reuse_subseed(shown: list, index: int):
            # the image's variation seed, when it was made with one (A1111: -1 otherwise)
            return shown[index][3] if shown and index < len(shown) and len(shown[index]) > 3 else -1

        form.random_subseed.click(lambda: -1, outputs=form.seed_extras["subseed"], **PRIVATE)
        form.reuse_subseed.click(reuse_subseed, inputs=[form.results, form.selected],
                                 outputs=form.seed_extras["subseed"], **PRIVATE)
