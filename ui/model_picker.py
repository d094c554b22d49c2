"""The checkpoint dropdown at the top of the page, with a refresh button."""
from __future__ import annotations

import time

import gradio as gr

from backend.checkpoint_files import CheckpointError
from backend.services import Services
from ui.progress_view import render_error


def checkpoint_choices(services: Services) -> list[tuple[str, str]]:
    return [(entry.label, entry.title) for entry in services.models.list_checkpoints()]


def build_model_picker(services: Services) -> gr.Dropdown:
    with gr.Row():
        dropdown = gr.Dropdown(label="Stable Diffusion checkpoint", choices=checkpoint_choices(services),
                               value=services.models.selected.title, elem_id="checkpoint", scale=6)
        refresh = gr.Button("🔄", elem_id="refresh_checkpoints", scale=0, min_width=50)
    status = gr.HTML(elem_id="checkpoint_status")

    def on_refresh():
        services.models.refresh()
        return gr.update(choices=checkpoint_choices(services), value=services.models.selected.title)

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

    refresh.click(on_refresh, outputs=dropdown, api_visibility="private")
    dropdown.input(on_select, inputs=dropdown, outputs=[status, dropdown], concurrency_limit=None,
                   api_visibility="private")
    return dropdown
