"""A1111's "Script" dropdown at the bottom of the txt2img and img2img settings: "None" or one of the Script menu's
scripts (built in, or added by extensions), whose arguments appear below it when chosen. The components are built
from each script's ScriptArgs, in script_args order."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import gradio as gr

from backend.core.scripts import Script, ScriptArg
from backend.services import Services
from ui.generation_form import PRIVATE

NO_SCRIPT = "None"


@dataclass
class ScriptMenu:
    dropdown: gr.Dropdown
    arguments: dict[str, list] = field(default_factory=dict)  # script title -> its components, in argument order

    @property
    def inputs(self) -> set:
        return {self.dropdown, *(component for components in self.arguments.values() for component in components)}

    def request_fields(self, values: dict) -> dict:
        title = values[self.dropdown]
        if not title or title == NO_SCRIPT or title not in self.arguments:
            return {}
        return {"script_name": title.lower(), "script_args": [values[c] for c in self.arguments[title]]}


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def argument_component(arg: ScriptArg, elem_id: str):
    if arg.hidden:
        return gr.State(arg.value)
    common = {"label": arg.label, "value": arg.value, "elem_id": elem_id}
    if arg.kind == "checkbox":
        return gr.Checkbox(**common)
    if arg.kind == "slider":
        return gr.Slider(minimum=arg.minimum, maximum=arg.maximum, step=arg.step, **common)
    if arg.kind == "number":
        return gr.Number(minimum=arg.minimum, maximum=arg.maximum, step=arg.step, **common)
    if arg.kind == "radio":
        return gr.Radio(choices=list(arg.choices or ()), **common)
    if arg.kind == "checkboxgroup":
        return gr.CheckboxGroup(choices=list(arg.choices or ()), **common)
    if arg.kind == "dropdown":
        return gr.Dropdown(choices=list(arg.choices or ()), **common)
    return gr.Textbox(lines=4 if arg.kind == "textarea" else 1, **common)


def build_script_menu(services: Services, tab: str) -> ScriptMenu:
    scripts: list[Script] = [script for script in services.generator.scripts() if tab in script.tabs]
    dropdown = gr.Dropdown([NO_SCRIPT, *(script.title for script in scripts)], value=NO_SCRIPT, label="Script",
                           elem_id=f"{tab}_script")
    menu = ScriptMenu(dropdown)
    groups = []
    for script in scripts:
        with gr.Column(visible=False, elem_id=f"{tab}_script_{slug(script.title)}") as group:
            menu.arguments[script.title] = [argument_component(arg, f"{tab}_script_{slug(script.title)}_{index}")
                                            for index, arg in enumerate(script.args)]
        groups.append((script.title, group))

    def show(title: str):
        return [gr.Column(visible=name == title) for name, _ in groups]

    dropdown.change(show, inputs=dropdown, outputs=[group for _, group in groups], show_progress="hidden",
                    **PRIVATE)
    return menu
