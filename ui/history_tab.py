"""History: every saved image, newest first, searchable by prompt, kept across restarts."""
from __future__ import annotations

import gradio as gr

from backend.services import Services
from ui.generation_form import PRIVATE
from ui.send_to import SendTo

PAGE_SIZE = 60


def build_history_tab(services: Services, send_to: SendTo):
    with gr.Row():
        search = gr.Textbox(label="Search prompts", elem_id="history_search", scale=5)
        refresh = gr.Button("Search / refresh", elem_id="history_refresh", scale=1)
    with gr.Row():
        gallery = gr.Gallery(label="Images", elem_id="history_gallery", columns=6, height=520, interactive=False)
        with gr.Column():
            infotext = gr.Textbox(label="Generation parameters", lines=6, interactive=False,
                                  elem_id="history_infotext")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="history_send_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="history_send_img2img")
                to_inpaint = gr.Button("Send to inpaint", elem_id="history_send_inpaint")
                to_upscale = gr.Button("Send to upscale", elem_id="history_send_upscale")
    rows = gr.State([])  # [(path, infotext)] in gallery order
    selected_path = gr.State(None)

    def load(query: str):
        found = services.history.images(query or "", limit=PAGE_SIZE)
        return ([(row["path"], row["prompt"][:80]) for row in found], [(row["path"], row["infotext"]) for row in found],
                "", None)

    def select(shown: list, event: gr.SelectData):
        if not shown or event.index is None or event.index >= len(shown):
            return "", None
        path, text = shown[event.index]
        return text, path

    outputs = [gallery, rows, infotext, selected_path]
    refresh.click(load, inputs=search, outputs=outputs, **PRIVATE)
    search.submit(load, inputs=search, outputs=outputs, **PRIVATE)
    gallery.select(select, inputs=rows, outputs=[infotext, selected_path], **PRIVATE)
    send_to.to_txt2img(to_txt2img, infotext)
    send_to.to_img2img(to_img2img, selected_path, infotext, "img2img")
    send_to.to_img2img(to_inpaint, selected_path, infotext, "inpaint")
    send_to.to_upscale(to_upscale, selected_path)
    return load, search, outputs
