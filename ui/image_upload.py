"""Image inputs whose uploads our handlers check, so a file that is not an image is said under the input.

Gradio's Image opens every upload with Pillow while it prepares an event, before any handler runs; a text
file named .png then fails the whole event with a raw "Could not preprocess input component" toast and red
Error badges on every output. These inputs hand the handler the uploaded file's path untouched (Gradio has
already checked that the file is one it received), and an upload event checks it with backend.core.image_input's
rules: a file that cannot be used is taken out of the input and the reason shown beneath it.

The change is made on each component, not in a subclass: Gradio writes a .pyi stub beside the source of
every Component subclass when the class is created, which would put files into the app's folder at import.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr

from backend.core.image_input import NOT_AN_IMAGE, upload_problem
from ui.generation_form import PRIVATE


def path_without_decoding(preprocess):
    """Gradio's preprocess for an Image, except that an uploaded file is passed on as its path, unopened."""
    def preprocess_path(payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)  # decoded, checked and re-encoded by the request (backend.core.image_input)
        return preprocess(payload)
    return preprocess_path


def render_upload_problem(problem: str) -> str:
    return f'<div class="upload-problem" style="color:#dc2626">{html.escape(problem)}</div>'


def image_upload(label: str, elem_id: str, **options) -> gr.Image:
    """An image input (a file path for the handlers) with the line beneath it that says why an upload is
    refused."""
    image = gr.Image(label=label, type="filepath", image_mode=None, elem_id=elem_id, **options)
    image.preprocess = path_without_decoding(image.preprocess)
    status = gr.HTML(elem_id=f"{elem_id}_status", elem_classes="upload-status")

    def check(path: str | None):
        problem = upload_problem(Path(path).read_bytes()) if path else None
        if problem is None:
            return gr.update(), ""
        return None, render_upload_problem(problem)  # nothing unusable stays in the input

    image.upload(check, inputs=image, outputs=[image, status], show_progress="hidden", **PRIVATE)
    image.clear(lambda: "", outputs=status, show_progress="hidden", **PRIVATE)
    return image


def editor_upload_check(page: gr.Blocks, editor_elem_id: str):
    """The inpainting editor decodes an upload in the browser and silently ignores a file it cannot draw, so
    nothing reaches the server: the browser itself says it under the editor (in `<editor id>_status`)."""
    refused = json.dumps(render_upload_problem(NOT_AN_IMAGE))
    script = f"""() => {{
        const editor = {json.dumps("#" + editor_elem_id)}, status = {json.dumps("#" + editor_elem_id + "_status")};
        const check = async (file) => {{
            const line = document.querySelector(status);
            if (!file || !line) return;
            try {{ (await createImageBitmap(file)).close(); line.innerHTML = ""; }}
            catch (error) {{ line.innerHTML = {refused}; }}
        }};
        document.addEventListener("change", (event) => {{
            const input = event.target;
            if (input instanceof HTMLInputElement && input.type === "file" && input.closest(editor))
                check(input.files && input.files[0]);
        }}, true);
        document.addEventListener("drop", (event) => {{
            if (event.target instanceof Element && event.target.closest(editor))
                check(event.dataTransfer && event.dataTransfer.files[0]);
        }}, true);
    }}"""
    page.load(None, js=script, **PRIVATE)
