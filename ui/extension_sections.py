"""Extensions' sections in the txt2img/img2img forms and their own tabs. A section's values travel in the
request as extension_args[<extension>][<argument>]; a section or tab whose build fails shows its error."""
from __future__ import annotations

import html

import gradio as gr

from backend.services import Services


def _failure(services: Services, extension: str, what: str, error: Exception):
    services.extensions.hooks.report_failure(extension, what, error)
    gr.HTML(f'<div class="job-error" style="color:#dc2626">Extension {html.escape(extension)} could not build its '
            f'{html.escape(what)}: {html.escape(f"{type(error).__name__}: {error}")}</div>')


def build_sections(services: Services, tab: str) -> dict[str, dict[str, gr.Component]]:
    """The accordions extensions added to `tab`'s form: {extension: {argument: component}}."""
    inputs: dict[str, dict[str, gr.Component]] = {}
    for section in services.extensions.hooks.sections:
        if tab not in section.tabs:
            continue
        with gr.Accordion(section.title, open=False, elem_id=f"{tab}_extension_{section.extension}"):
            try:
                components = section.build(tab) or {}
                if not all(isinstance(c, gr.components.Component) for c in components.values()):
                    raise TypeError("build() must return {argument name: Gradio component}")
            except Exception as error:  # foreign code: the rest of the page must still build
                _failure(services, section.extension, "section", error)
                continue
        inputs.setdefault(section.extension, {}).update(components)
    return inputs


def build_extension_tabs(services: Services):
    for tab in services.extensions.hooks.tabs:
        with gr.Tab(tab.title, id=f"extension_{tab.extension}_{tab.title}"):
            try:
                tab.build()
            except Exception as error:
                _failure(services, tab.extension, "tab", error)
