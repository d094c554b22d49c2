"""The whole page: model picker and queue on top, one tab per feature."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.route_utils import CustomCORSMiddleware

from backend.services import Services
from ui.extension_sections import build_extension_tabs
from ui.extensions_tab import build_extensions_tab
from ui.form_defaults import FormDefaults
from ui.generation_form import PRIVATE
from ui.history_tab import build_history_tab
from ui.image_upload import editor_upload_check
from ui.img2img_tab import build_img2img_tab
from ui.model_family import follow_model_family
from ui.model_picker import build_model_picker, follow_startup
from ui.png_info_tab import build_png_info_tab
from ui.progress_view import render_queue
from ui.send_to import SendTo
from ui.settings_tab import build_settings_tab
from ui.txt2img_tab import build_txt2img_tab
from ui.upscale_tab import build_upscale_tab

QUEUE_REFRESH_SECONDS = 1.0
PAGE_CSS = Path(__file__).with_name("style.css")  # app.py hands it to launch()
FOOTER_LINKS = ["gradio"]  # Gradio's "Use via API" lists no routes of ours and its "Settings" is not ours: hidden


def drop_gradio_cors(page: gr.Blocks):
    """Gradio adds its own CORS middleware outermost, and it allows every origin, with credentials, whenever the
    server is reached by a name other than localhost (a LAN address, a share link). Ours (app.py) allows only
    --cors-allow-origins, so Gradio's is taken out of the running app and the middleware stack rebuilt."""
    app = page.server_app
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CustomCORSMiddleware]
    app.middleware_stack = app.build_middleware_stack()


def model_size_updates(services: Services, title: str) -> tuple:
    """Choosing a model that declares its training size sets the width and height to it."""
    entry = services.models.registry.find(title)
    if entry is None or entry.resolution is None:
        return (gr.update(),) * 4
    width, height = entry.resolution
    return width, height, width, height


def render_footer(api_docs: bool) -> str:
    """Our footer line: the REST API's documentation when the API is on (A1111's "API" link)."""
    if not api_docs:
        return ""
    return ('<div class="webui-footer" style="text-align:center">'
            '<a href="/docs" target="_blank" rel="noreferrer">API</a> (A1111-compatible REST API, /sdapi/v1)</div>')


def build_ui(services: Services, mcp: bool = False, api_docs: bool = False) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion WebUI") as page:
        model = build_model_picker(services)
        with gr.Accordion("Queue", open=False, elem_id="queue_panel"):
            queue_view = gr.HTML(render_queue(services.jobs.pending(), services.worker_states()),
                                 elem_id="queue_view")
        gr.Timer(QUEUE_REFRESH_SECONDS).tick(lambda: render_queue(services.jobs.pending(), services.worker_states()),
                                             outputs=queue_view, show_progress="hidden", queue=False, **PRIVATE)
        size = services.models.selected.resolution
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(services, model, size)
            with gr.Tab("img2img", id="img2img"):
                img2img = build_img2img_tab(services, model, size)
            with gr.Tab("Upscale", id="upscale"):
                upscale = build_upscale_tab(services)
            send_to = SendTo(services, model, tabs, txt2img, img2img, upscale)
            with gr.Tab("PNG Info", id="png_info"):
                build_png_info_tab(services, send_to)
            with gr.Tab("History", id="history") as history:
                load_history, search, history_outputs = build_history_tab(services, send_to)
            build_extension_tabs(services)
            with gr.Tab("Extensions", id="extensions"):
                build_extensions_tab(services)
            with gr.Tab("Settings", id="settings") as settings_tab:
                settings = build_settings_tab(services, FormDefaults.of_forms({"txt2img": txt2img,
                                                                               "img2img": img2img.form}), page)
        history.select(load_history, inputs=search, outputs=history_outputs, **PRIVATE)
        settings_tab.select(lambda: settings.refreshed(services), outputs=[settings.view, *settings.controls.values()],
                            **PRIVATE)
        model.checkpoint.input(lambda title: model_size_updates(services, title), inputs=model.checkpoint,
                         outputs=[txt2img.width, txt2img.height, img2img.form.width, img2img.form.height], **PRIVATE)
        send_to.to_img2img(txt2img.send_to_img2img, txt2img.selected_path, txt2img.infotext, "img2img")
        send_to.to_img2img(txt2img.send_to_inpaint, txt2img.selected_path, txt2img.infotext, "inpaint")
        send_to.to_upscale(txt2img.send_to_upscale, txt2img.selected_path)
        send_to.to_upscale(img2img.form.send_to_upscale, img2img.form.selected_path)
        loaded = follow_startup(page, services, model)
        follow_model_family(services, model, [txt2img, img2img.form], [model.chosen, loaded])
        editor_upload_check(page, "img2img_inpaint_editor")
        if api_docs:
            gr.HTML(render_footer(api_docs), elem_id="webui_footer")
        if mcp:
            from ui.mcp_tools import register_mcp_tools

            register_mcp_tools(services)
    return page
