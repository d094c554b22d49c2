"""History: every saved image, newest first, searchable by prompt, kept across restarts; and the recent jobs
with their status (interrupted and failed ones too, with their error)."""
from __future__ import annotations

import datetime
import html
from pathlib import Path

import gradio as gr

from backend.services import Services
from ui.generation_form import PRIVATE
from ui.send_to import SendTo

PAGE_SIZE = 60
JOBS_SHOWN = 30
KIND_NAMES = {"Txt2ImgRequest": "txt2img", "Img2ImgRequest": "img2img", "Img2ImgBatchRequest": "img2img batch",
              "ExtrasRequest": "upscale"}


def image_caption(row: dict) -> str:
    """The prompt's start, and the job's status when the job did not finish normally."""
    status = row.get("job_status")
    marker = f" ({status})" if status not in (None, "done") else ""
    return row["prompt"][:80] + marker


def render_jobs(jobs: list[dict]) -> str:
    """The recent jobs, newest first: when, kind, prompt, status, images kept, and the error if any."""
    if not jobs:
        return '<div class="history-jobs-empty">No jobs yet.</div>'
    rows = []
    for job in jobs:
        when = datetime.datetime.fromtimestamp(job["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        prompt = html.escape(str(job["request"].get("prompt", ""))[:60])
        error = html.escape(job["error"] or "")
        rows.append(f'<tr class="history-job-{html.escape(job["status"])}"><td>{when}</td>'
                    f'<td>{KIND_NAMES.get(job["kind"], html.escape(job["kind"]))}</td><td>{prompt}</td>'
                    f'<td>{html.escape(job["status"])}</td><td>{job["images"]}</td><td>{error}</td></tr>')
    return ('<table class="history-jobs"><tr><th>Queued</th><th>Kind</th><th>Prompt</th><th>Status</th>'
            '<th>Images</th><th>Error</th></tr>' + "".join(rows) + "</table>")


def build_history_tab(services: Services, send_to: SendTo):
    with gr.Row():
        search = gr.Textbox(label="Search prompts", elem_id="history_search", scale=5)
        refresh = gr.Button("Search / refresh", elem_id="history_refresh", scale=1)
    with gr.Row():
        gallery = gr.Gallery(label="Images", elem_id="history_gallery", columns=6, height=520, interactive=False,
                             object_fit="contain")
        with gr.Column():
            infotext = gr.Textbox(label="Generation parameters", lines=6, interactive=False,
                                  elem_id="history_infotext")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="history_send_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="history_send_img2img")
                to_inpaint = gr.Button("Send to inpaint", elem_id="history_send_inpaint")
                to_upscale = gr.Button("Send to upscale", elem_id="history_send_upscale")
    with gr.Accordion("Recent jobs", open=True, elem_id="history_jobs_panel"):
        jobs = gr.HTML(elem_id="history_jobs")
    rows = gr.State([])  # [(path, infotext)] in gallery order
    selected_path = gr.State(None)

    outputs_folder = services.settings.outputs_dir.resolve()

    def load(query: str):
        # img2img Batch writes into a folder the user chose, which the page cannot serve: only outputs are shown
        found = [row for row in services.history.images(query or "", limit=PAGE_SIZE)
                 if Path(row["path"]).resolve().is_relative_to(outputs_folder)]
        return ([(row["path"], image_caption(row)) for row in found], [(row["path"], row["infotext"]) for row in found],
                "", None, render_jobs(services.history.jobs(limit=JOBS_SHOWN)))

    def select(shown: list, event: gr.SelectData):
        if not shown or event.index is None or event.index >= len(shown):
            return "", None
        path, text = shown[event.index]
        return text, path

    outputs = [gallery, rows, infotext, selected_path, jobs]
    refresh.click(load, inputs=search, outputs=outputs, **PRIVATE)
    search.submit(load, inputs=search, outputs=outputs, **PRIVATE)
    gallery.select(select, inputs=rows, outputs=[infotext, selected_path], **PRIVATE)
    send_to.to_txt2img(to_txt2img, infotext)
    send_to.to_img2img(to_img2img, selected_path, infotext, "img2img")
    send_to.to_img2img(to_inpaint, selected_path, infotext, "inpaint")
    send_to.to_upscale(to_upscale, selected_path)
    return load, search, outputs
