"""PNG Info: drop an image (ours, A1111's, or any PNG/JPEG/WEBP with A1111 metadata) to see its parameters."""
from __future__ import annotations

import gradio as gr
from PIL import Image, UnidentifiedImageError

from backend.core.image_input import ACCEPTED_FORMATS
from backend.core.image_metadata import read_infotext
from backend.services import Services
from ui.generation_form import PRIVATE
from ui.image_upload import image_upload
from ui.send_to import SendTo


def build_png_info_tab(services: Services, send_to: SendTo):
    with gr.Row():
        with gr.Column():
            # A file path, not a decoded image: the metadata must come from the file exactly as uploaded.
            source = image_upload("Source", "pnginfo_image", sources=["upload", "clipboard"])
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
                to_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint")
                to_upscale = gr.Button("Send to upscale", elem_id="pnginfo_send_upscale")

    def read(path: str | None) -> str:
        if not path:
            return ""
        try:
            with Image.open(path, formats=ACCEPTED_FORMATS) as image:  # the header and text chunks only
                return read_infotext(image) or "This image has no generation parameters."
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            return ""  # the line under the input says what is wrong with the file

    source.change(read, inputs=source, outputs=parameters, **PRIVATE)
    send_to.to_txt2img(to_txt2img, parameters)
    send_to.to_img2img(to_img2img, source, parameters, "img2img")
    send_to.to_img2img(to_inpaint, source, parameters, "inpaint")
    send_to.to_upscale(to_upscale, source)
