"""What on the page follows the loaded model's family: the CFG scale's default (1 for Flux, whose guidance is
distilled, as the REST API's default; the tab's own default for the others) unless the user changed it, the
Distilled CFG Scale slider (shown for Flux only) and the prompts' token counters (with T5's count for Flux/SD3)."""
from __future__ import annotations

import gradio as gr

from backend.generation.flow_guidance import FLUX_DEFAULT_CFG
from backend.services import Services
from ui.generation_form import PRIVATE, GenerationForm, prompt_token_counts
from ui.model_picker import ModelControls, loaded_family


def cfg_default(family: str | None, value: float, automatic: float, tab_default: float) -> tuple[object, float]:
    """(the slider's update, the value it was last given automatically). A value the user set (anything but the
    automatic one) stays; an automatic one follows the family."""
    wanted = FLUX_DEFAULT_CFG if family == "flux" else tab_default
    if family is None or value != automatic or value == wanted:
        return gr.update(), automatic
    return wanted, wanted


def follow_model_family(services: Services, model: ModelControls, forms: list[GenerationForm], after: list):
    """Wire the updates to run `after` each of the given events (a model chosen, the page loaded)."""
    automatic = [gr.State(form.cfg_scale.value) for form in forms]
    tab_defaults = [form.cfg_scale.value for form in forms]
    boxes = [(form.prompt, form.token_counter, form.steps) for form in forms] + \
            [(form.negative_prompt, form.negative_token_counter, form.steps) for form in forms]
    inputs = [*(form.cfg_scale for form in forms), *automatic, *(box for box, _, _ in boxes),
              *(steps for _, _, steps in boxes)]
    outputs = [*(form.cfg_scale for form in forms), *automatic, model.distilled_cfg,
               *(counter for _, counter, _ in boxes)]

    def update(*values):
        count = len(forms)
        cfgs, autos = values[:count], values[count:2 * count]
        texts, steps = values[2 * count:2 * count + len(boxes)], values[2 * count + len(boxes):]
        family = loaded_family(services)
        followed = [cfg_default(family, float(value), float(auto), default)
                    for value, auto, default in zip(cfgs, autos, tab_defaults)]
        distilled = gr.update() if family is None else gr.update(visible=family == "flux")
        return (*(slider for slider, _ in followed), *(auto for _, auto in followed), distilled,
                *(prompt_token_counts(services, text, step) for text, step in zip(texts, steps)))

    for event in after:
        event.then(update, inputs=inputs, outputs=outputs, show_progress="hidden", **PRIVATE)
