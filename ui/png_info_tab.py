"""PNG Info: drop an image (ours, A1111's, or any PNG/JPEG/WEBP with A1111 metadata) to see its parameters."""
from __future__ import annotations

import gradio as gr
from PIL import Image, UnidentifiedImageError

from backend.outputs import read_infotext
from backend.services import Services
from ui.send_to import txt2img_targets, txt2img_updates
from ui.txt2img_tab import Txt2ImgForm


def build_png_info_tab(services: Services, form: Txt2ImgForm, checkpoint: gr.Dropdown, tabs: gr.Tabs):
    with gr.Row():
        # A file path, not a decoded image: the metadata must come from the file exactly as uploaded.
        source = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters")
            send = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")

    def read(path: str | None) -> str:
        if not path:
            return ""
        try:
            with Image.open(path) as image:
                return read_infotext(image) or "This image has no generation parameters."
        except (UnidentifiedImageError, OSError):
            return "This file is not a readable PNG, JPEG or WEBP image."

    source.change(read, inputs=source, outputs=parameters, api_visibility="private")
    send.click(lambda text: txt2img_updates(services, text), inputs=parameters,
               outputs=txt2img_targets(form, checkpoint, tabs), api_visibility="private")
