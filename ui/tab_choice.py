"""Which sub-tab the user has open (img2img mode, upscale source), kept in the browser.

A server-side gr.State set by each tab's select event races with a click that follows at once: Gradio runs the
two events on different workers, so under load the job could start with the previous tab's choice. A hidden
textbox set by a browser-only event already holds the new value when the next click reads its inputs."""
from __future__ import annotations

import json

import gradio as gr

from ui.generation_form import PRIVATE


def build_tab_choice(initial: str, elem_id: str) -> gr.Textbox:
    return gr.Textbox(value=initial, visible="hidden", interactive=False, elem_id=elem_id)


def follow_tab(tab: gr.Tab, choice: gr.Textbox, value: str) -> None:
    """Opening `tab` sets `choice` to `value` in the browser, with no round trip to the server."""
    tab.select(None, None, choice, js=f"() => {json.dumps(value)}", **PRIVATE)
