"""The model controls at the top of the page: checkpoint (with refresh), VAE and clip skip. Every
txt2img/img2img request takes its checkpoint, sd_vae and clip_skip fields from them."""
from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from backend.checkpoint_files import CheckpointError
from backend.requests import CLIP_SKIP_RANGE, GenerationRequest
from backend.services import Services
from ui.progress_view import render_error


def checkpoint_choices(services: Services) -> list[tuple[str, str]]:
    return [(entry.label, entry.title) for entry in services.models.list_checkpoints()]


@dataclass
class ModelControls:
    checkpoint: gr.Dropdown
    vae: gr.Dropdown
    clip_skip: gr.Slider

    @property
    def inputs(self) -> set:
        return {self.checkpoint, self.vae, self.clip_skip}

    @property
    def fields(self) -> dict:
        """Request field -> component, for filling the controls from infotext."""
        return {"sd_vae": self.vae, "clip_skip": self.clip_skip}

    def request_fields(self, values: dict) -> dict:
        return {"checkpoint": values[self.checkpoint], "sd_vae": values[self.vae] or "Automatic",
                "clip_skip": int(values[self.clip_skip])}


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
    status = gr.HTML(elem_id="checkpoint_status")

    def on_refresh():
        services.models.refresh()
        services.networks.refresh()
        return (gr.update(choices=checkpoint_choices(services), value=services.models.selected.title),
                gr.update(choices=services.networks.vaes.choices()))

    def on_select(title: str):
        # A generator: the page shows "Loading" at once and stays usable while the model loads.
        yield f'<div class="model-loading">Loading {title}...</div>', gr.update()
        started = time.perf_counter()
        try:
            entry = services.models.select(title)
        except CheckpointError as error:
            previous = services.models.selected.title
            yield render_error(f"{error} (keeping {previous})"), gr.update(value=previous)
            return
        seconds = time.perf_counter() - started
        yield f'<div class="model-loaded">Loaded {entry.title} in {seconds:.1f}s</div>', gr.update()

    refresh.click(on_refresh, outputs=[dropdown, vae], api_visibility="private")
    dropdown.input(on_select, inputs=dropdown, outputs=[status, dropdown], concurrency_limit=None,
                   api_visibility="private")
    return ModelControls(dropdown, vae, clip_skip)
