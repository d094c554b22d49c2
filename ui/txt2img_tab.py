"""The txt2img tab."""
from __future__ import annotations

import gradio as gr

from backend.requests import Txt2ImgRequest, build_request
from backend.services import Services
from ui.generation_form import (GenerationForm, build_prompt_row, build_results, build_sampling_controls,
                                wire_generation)


def build_txt2img_tab(services: Services, checkpoint: gr.Dropdown, size: tuple[int, int] | None) -> GenerationForm:
    top = build_prompt_row("txt2img")
    with gr.Row():
        with gr.Column():
            form = GenerationForm(prefix="txt2img", **top, **build_sampling_controls("txt2img", size))
        with gr.Column():
            build_results(form)
            with gr.Row():
                form.send_to_img2img = gr.Button("Send to img2img", elem_id="txt2img_send_img2img")
                form.send_to_inpaint = gr.Button("Send to inpaint", elem_id="txt2img_send_inpaint")
    wire_generation(services, form, form.inputs | {checkpoint},
                    lambda values: build_request(Txt2ImgRequest, form.common_fields(values, checkpoint)))
    return form
