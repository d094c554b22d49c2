"""The whole page: model picker and queue on top, one tab per feature."""
from __future__ import annotations

import gradio as gr

from backend.services import Services
from ui.history_tab import build_history_tab
from ui.model_picker import build_model_picker
from ui.png_info_tab import build_png_info_tab
from ui.progress_view import render_queue
from ui.txt2img_tab import build_txt2img_tab

QUEUE_REFRESH_SECONDS = 1.0


def build_ui(services: Services, mcp: bool = False) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion WebUI") as page:
        checkpoint = build_model_picker(services)
        with gr.Accordion("Queue", open=False, elem_id="queue_panel"):
            queue_view = gr.HTML(render_queue(services.jobs.pending()), elem_id="queue_view")
        gr.Timer(QUEUE_REFRESH_SECONDS).tick(lambda: render_queue(services.jobs.pending()), outputs=queue_view,
                                              show_progress="hidden", queue=False, api_visibility="private")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                form = build_txt2img_tab(services, checkpoint)
            with gr.Tab("PNG Info", id="png_info"):
                build_png_info_tab(services, form, checkpoint, tabs)
            with gr.Tab("History", id="history") as history:
                load_history, search, history_outputs = build_history_tab(services, form, checkpoint, tabs)
        history.select(load_history, inputs=search, outputs=history_outputs, api_visibility="private")
        if mcp:
            from ui.mcp_tools import register_mcp_tools

            register_mcp_tools(services)
    return page
