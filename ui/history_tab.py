"""History: every saved image, newest first, searchable by prompt, kept across restarts."""
from __future__ import annotations

import gradio as gr

from backend.services import Services
from ui.send_to import txt2img_targets, txt2img_updates
from ui.txt2img_tab import Txt2ImgForm

PAGE_SIZE = 60


def build_history_tab(services: Services, form: Txt2ImgForm, checkpoint: gr.Dropdown, tabs: gr.Tabs):
    with gr.Row():
        search = gr.Textbox(label="Search prompts", elem_id="history_search", scale=5)
        refresh = gr.Button("Search / refresh", elem_id="history_refresh", scale=1)
    with gr.Row():
        gallery = gr.Gallery(label="Images", elem_id="history_gallery", columns=6, height=520, interactive=False)
        with gr.Column():
            infotext = gr.Textbox(label="Generation parameters", lines=6, interactive=False,
                                  elem_id="history_infotext")
            send = gr.Button("Send to txt2img", elem_id="history_send_txt2img")
    rows = gr.State([])

    def load(query: str):
        found = [row for row in services.history.images(query or "", limit=PAGE_SIZE)]
        return [(row["path"], row["prompt"][:80]) for row in found], [row["infotext"] for row in found], ""

    def select(texts: list, event: gr.SelectData):
        return texts[event.index] if texts and event.index is not None and event.index < len(texts) else ""

    refresh.click(load, inputs=search, outputs=[gallery, rows, infotext], api_visibility="private")
    search.submit(load, inputs=search, outputs=[gallery, rows, infotext], api_visibility="private")
    gallery.select(select, inputs=rows, outputs=infotext, api_visibility="private")
    send.click(lambda text: txt2img_updates(services, text), inputs=infotext,
               outputs=txt2img_targets(form, checkpoint, tabs), api_visibility="private")
    return load, search, [gallery, rows, infotext]
