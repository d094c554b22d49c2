"""The model controls at the top of the page: checkpoint (with refresh), VAE, clip skip, and for Flux/SD3 Forge's
"VAE / Text Encoder" files (remembered per checkpoint), Distilled CFG Scale and Shift. Every txt2img/img2img request
takes its checkpoint, sd_vae, clip_skip, distilled_cfg_scale and shift fields from them."""
from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass

import gradio as gr

from backend.core import skip_layer_guidance as slg
from backend.core.flow_samplers import SHIFT_RANGE
from backend.core.requests import CLIP_SKIP_RANGE, DISTILLED_CFG_RANGE, GenerationRequest
from backend.models.weight_files import CheckpointError
from backend.services import Services
from ui.progress_view import render_error

STARTUP_WAIT_SECONDS = 600  # how long a freshly opened page waits for the first model before giving up
STARTUP_POLL_SECONDS = 0.5


def checkpoint_choices(services: Services) -> list[tuple[str, str]]:
    """(label, title) per checkpoint; files that failed to load stay listed, marked."""
    return [(entry.label + (" (cannot be loaded)" if services.models.failure(entry.title) else ""), entry.title)
            for entry in services.models.list_checkpoints()]


def render_failures(services: Services, skip: str | None = None) -> str:
    """The checkpoints that could not be loaded, each with its reason (`skip`: one already reported above)."""
    failed = [(entry.title, services.models.failure(entry.title)) for entry in services.models.list_checkpoints()
              if entry.title != skip and services.models.failure(entry.title)]
    if not failed:
        return ""
    items = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in failed)  # each reason names its file
    return f'<div class="checkpoint-failures">Checkpoints that cannot be loaded:<ul>{items}</ul></div>'


@dataclass
class ModelControls:
    checkpoint: gr.Dropdown
    vae: gr.Dropdown
    clip_skip: gr.Slider
    status: gr.HTML
    components: gr.Dropdown | None = None
    distilled_cfg: gr.Slider | None = None
    shift: gr.Slider | None = None
    skip_layers: SkipLayerControls | None = None
    chosen: object = None  # the event of a model chosen in the dropdown (ends once it is loaded), for .then

    @property
    def inputs(self) -> set:
        skip_layers = set(self.skip_layers.fields.values()) if self.skip_layers else set()
        return {self.checkpoint, self.vae, self.clip_skip, self.distilled_cfg, self.shift, *skip_layers} - {None}

    @property
    def fields(self) -> dict:
        """Request field -> component, for filling the controls from infotext."""
        return {"sd_vae": self.vae, "clip_skip": self.clip_skip, "distilled_cfg_scale": self.distilled_cfg,
                "shift": self.shift, **(self.skip_layers.fields if self.skip_layers else {})}

    def request_fields(self, values: dict, txt2img: bool = True) -> dict:
        """`txt2img`: the skip-layer guidance fields are sent too (SD3's other pipelines have none)."""
        fields = {"checkpoint": values[self.checkpoint], "sd_vae": values[self.vae] or "Automatic",
                  "clip_skip": int(values[self.clip_skip]), "distilled_cfg_scale": float(values[self.distilled_cfg]),
                  "shift": float(values[self.shift])}
        if txt2img and self.skip_layers:
            fields |= {name: values[component] for name, component in self.skip_layers.fields.items()}
        return fields


@dataclass
class SkipLayerControls:
    """SD3.5's skip-layer guidance, shown while an SD3 model is selected."""
    box: gr.Accordion
    layers: gr.Textbox
    scale: gr.Slider
    start: gr.Slider
    stop: gr.Slider

    @property
    def fields(self) -> dict:
        return {"skip_guidance_layers": self.layers, "skip_layer_guidance_scale": self.scale,
                "skip_layer_guidance_start": self.start, "skip_layer_guidance_stop": self.stop}


def build_skip_layer_controls(visible: bool) -> SkipLayerControls:
    defaults = GenerationRequest.model_fields
    with gr.Accordion("Skip layer guidance (SD3.5, txt2img)", open=False, visible=visible,
                      elem_id="skip_layer_guidance") as box, gr.Row():
        layers = gr.Textbox(label="Skip layers", placeholder="7, 8, 9 (empty: off)", elem_id="skip_guidance_layers",
                            scale=2, info="transformer layers the extra pass leaves out; needs CFG scale above 1")
        scale = gr.Slider(label="SLG scale", minimum=slg.SCALE_RANGE[0], maximum=slg.SCALE_RANGE[1], step=0.1,
                          value=defaults["skip_layer_guidance_scale"].default, elem_id="skip_layer_guidance_scale")
        start = gr.Slider(label="SLG start", minimum=0.0, maximum=1.0, step=0.01,
                          value=defaults["skip_layer_guidance_start"].default, elem_id="skip_layer_guidance_start")
        stop = gr.Slider(label="SLG stop", minimum=0.0, maximum=1.0, step=0.01,
                         value=defaults["skip_layer_guidance_stop"].default, elem_id="skip_layer_guidance_stop")
    return SkipLayerControls(box, layers, scale, start, stop)


def shows_skip_layers(services: Services, title: str | None) -> bool:
    return bool(title) and services.models.loaded_family(title) == "sd3"


def build_model_picker(services: Services) -> ModelControls:
    defaults = GenerationRequest.model_fields
    with gr.Row():
        dropdown = gr.Dropdown(label="Stable Diffusion checkpoint", choices=checkpoint_choices(services),
                               value=services.models.selected.title, elem_id="checkpoint", scale=6)
        refresh = gr.Button("🔄", elem_id="refresh_checkpoints", scale=0, min_width=50)
        vae = gr.Dropdown(label="SD VAE", choices=services.networks.vaes.choices(),
                          value=defaults["sd_vae"].default, elem_id="sd_vae", scale=3)
        clip_skip = gr.Slider(label="Clip skip", minimum=CLIP_SKIP_RANGE[0], maximum=CLIP_SKIP_RANGE[1], step=1,
                              value=defaults["clip_skip"].default, elem_id="clip_skip", scale=2)
    with gr.Row():  # Flux / SD3: the parts a checkpoint lacks, and their guidance and schedule settings
        components = gr.Dropdown(label="VAE / Text Encoder", choices=component_choices(services), multiselect=True,
                                 value=chosen_components(services, services.models.selected.title),
                                 elem_id="forge_additional_modules", scale=6,
                                 info="Flux / SD3: separate files from models/text_encoder and models/VAE")
        distilled_cfg = gr.Slider(label="Distilled CFG Scale", minimum=DISTILLED_CFG_RANGE[0],
                                  maximum=DISTILLED_CFG_RANGE[1], step=0.1,
                                  value=defaults["distilled_cfg_scale"].default, elem_id="distilled_cfg_scale",
                                  scale=2, info="Flux dev", visible=loaded_family(services) == "flux")
        shift = gr.Slider(label="Shift", minimum=SHIFT_RANGE[0], maximum=SHIFT_RANGE[1], step=0.1,
                          value=defaults["shift"].default, elem_id="flow_shift", scale=2,
                          info="Flux / SD3; 0 = the model's own")
    skip_layers = build_skip_layer_controls(shows_skip_layers(services, services.models.selected.title))
    status = gr.HTML(elem_id="checkpoint_status")

    def on_refresh():
        services.models.refresh()
        services.networks.refresh()
        return (gr.update(choices=checkpoint_choices(services), value=services.models.selected.title),
                gr.update(choices=services.networks.vaes.choices()), render_failures(services),
                gr.update(choices=component_choices(services)))

    def on_components(title: str, names: list[str] | None):
        try:
            services.models.choose_components(title, list(names or []))
        except CheckpointError as error:
            return render_error(str(error))
        chosen = ", ".join(names or []) or "none (the checkpoint's own parts)"
        return f'<div class="model-loaded">{html.escape(title)} loads with: {html.escape(chosen)}</div>'

    def on_select(title: str):
        # A generator: the page shows "Loading" at once and stays usable while the model loads.
        yield f'<div class="model-loading">Loading {html.escape(title)}...</div>', gr.update(), gr.update()
        started = time.perf_counter()
        try:
            entry = services.select_checkpoint(title)
        except CheckpointError as error:
            previous = services.models.selected.title
            yield (render_error(f"{error} (keeping {previous})") + render_failures(services, skip=title),
                   gr.update(choices=checkpoint_choices(services), value=previous), gr.update())
            return
        seconds = time.perf_counter() - started
        yield (f'<div class="model-loaded">Loaded {html.escape(entry.title)} in {seconds:.1f}s</div>'
               + render_failures(services), gr.update(),
               gr.update(visible=shows_skip_layers(services, entry.title)))

    refresh.click(on_refresh, outputs=[dropdown, vae, status, components], api_visibility="private")
    components.input(on_components, inputs=[dropdown, components], outputs=status, api_visibility="private")
    dropdown.change(lambda title: gr.update(value=chosen_components(services, title)), inputs=dropdown,
                    outputs=components, api_visibility="private")
    chosen = dropdown.input(on_select, inputs=dropdown, outputs=[status, dropdown, skip_layers.box],
                            concurrency_limit=None, api_visibility="private")
    return ModelControls(dropdown, vae, clip_skip, status, components, distilled_cfg, shift, skip_layers, chosen)


def loaded_family(services: Services) -> str | None:
    """The family of the selected model when it is loaded (None while it loads)."""
    model = services.models.loaded(None)
    return model.family if model is not None else None


def component_choices(services: Services) -> list[str]:
    return services.models.components.available() if services.models.components else []


def chosen_components(services: Services, title: str | None) -> list[str]:
    if not title or services.models.components is None:
        return []
    available = set(component_choices(services))
    return [name for name in services.models.components.chosen(title) if name in available]


def follow_startup(page: gr.Blocks, services: Services, controls: ModelControls):
    """The page is served while the first model is still being chosen (a file that does not load is skipped), so
    an opened page shows that, then the model that loaded and the files that did not."""
    async def on_load(shown: str | None):  # async: a page waiting here holds no worker thread
        if not services.models.default_chosen.is_set():
            yield '<div class="model-loading">Loading the first checkpoint...</div>', gr.update(), gr.update()
            deadline = time.monotonic() + STARTUP_WAIT_SECONDS
            while not services.models.default_chosen.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(STARTUP_POLL_SECONDS)
        # a title that loads stays as it is: the user (or pasted infotext) may have chosen another one meanwhile
        if not shown or services.models.failure(shown):
            value = services.models.selected.title
            yield (render_failures(services), gr.update(choices=checkpoint_choices(services), value=value),
                   gr.update(visible=shows_skip_layers(services, value)))
        else:
            yield (render_failures(services), gr.update(choices=checkpoint_choices(services)),
                   gr.update(visible=shows_skip_layers(services, shown)))

    outputs = [controls.status, controls.checkpoint, controls.skip_layers.box]
    return page.load(on_load, inputs=controls.checkpoint, outputs=outputs,
                     show_progress="hidden", concurrency_limit=None, api_visibility="private")
