"""Fill the txt2img form from infotext ("Send to txt2img" in PNG Info and History)."""
from __future__ import annotations

import gradio as gr

from backend.infotext import parse_infotext, request_fields
from backend.services import Services
from ui.txt2img_tab import Txt2ImgForm


def txt2img_targets(form: Txt2ImgForm, checkpoint: gr.Dropdown, tabs: gr.Tabs) -> list:
    return [form.prompt, form.negative_prompt, form.sampler, form.schedule, form.steps, form.cfg_scale, form.seed,
            form.width, form.height, checkpoint, tabs]


def txt2img_updates(services: Services, infotext: str | None) -> tuple:
    """Values for txt2img_targets(): every field the infotext names, model included; others unchanged."""
    if not infotext:
        return tuple(gr.update() for _ in range(11))
    fields = request_fields(parse_infotext(infotext))
    entry = None
    for key in ("model_hash", "model_name"):
        if fields.get(key):
            entry = services.models.registry.find(fields[key])
            if entry:
                break
    value = lambda name: fields[name] if name in fields else gr.update()  # noqa: E731
    return (fields["prompt"], fields["negative_prompt"], value("sampler_name"), value("scheduler"), value("steps"),
            value("cfg_scale"), value("seed"), value("width"), value("height"),
            entry.title if entry else gr.update(), gr.Tabs(selected="txt2img"))
