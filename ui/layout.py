"""The whole page: model picker on top, one tab per feature."""
from __future__ import annotations

import gradio as gr

from backend.services import Services
from ui.model_picker import build_model_picker
from ui.txt2img_tab import build_txt2img_tab


def build_ui(services: Services) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion WebUI") as page:
        checkpoint = build_model_picker(services)
        with gr.Tabs():
            with gr.Tab("txt2img", id="txt2img"):
                build_txt2img_tab(services, checkpoint)
    return page
