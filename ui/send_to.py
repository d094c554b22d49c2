"""Fill a tab's form from infotext, and carry images between tabs ("Send to txt2img/img2img/inpaint/upscale")."""
from __future__ import annotations

import gradio as gr

from backend.core.infotext import parse_infotext, request_fields
from backend.services import Services
from ui.controlnet_units import paste_updates
from ui.generation_form import PRIVATE, GenerationForm
from ui.img2img_tab import editor_with_image
from ui.model_picker import ModelControls
from ui.refiner_controls import refiner_updates
from ui.styles import style_names, styles_from_prompts

FIELD_COMPONENTS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "sampler_name": "sampler",
                    "scheduler": "schedule", "steps": "steps", "cfg_scale": "cfg_scale", "seed": "seed",
                    "width": "width", "height": "height"}

HIRES_OPTION_DEFAULTS = {"hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler", "hr_cfg": 0,
                         "hr_prompt": "", "hr_negative_prompt": "", "hr_checkpoint_name": "Use same checkpoint"}


def form_targets(form: GenerationForm, model: ModelControls) -> list:
    return [getattr(form, name) for name in FIELD_COMPONENTS.values()] + list(form.extra_fields.values()) + [
        model.checkpoint, *model.fields.values(), *form.seed_extras.values(), *form.refiner.values(),
        *([form.styles.dropdown] if form.styles else []),
        *(form.controlnet.paste_targets if form.controlnet else [])] + (
        [form.show_seed_extras] if form.show_seed_extras is not None else [])


def form_updates(services: Services, infotext: str | None, form: GenerationForm, model: ModelControls) -> dict:
    """{component: value} for every field the infotext names, model, VAE and clip skip included."""
    if not infotext:
        return {}
    parameters = parse_infotext(infotext)
    fields = request_fields(parameters)
    if fields.get("hr_checkpoint_name"):  # A1111 names it "name [hash]"; the dropdown holds titles
        found = services.models.registry.find(fields["hr_checkpoint_name"])
        fields["hr_checkpoint_name"] = found.title if found else HIRES_OPTION_DEFAULTS["hr_checkpoint_name"]
    updates = {getattr(form, component): fields[name] for name, component in FIELD_COMPONENTS.items()
               if name in fields}
    updates.update({component: fields[name] for name, component in form.extra_fields.items() if name in fields})
    updates.update(seed_extra_updates(fields, form))
    updates.update(refiner_updates(services, fields, form.refiner))
    updates.update(paste_updates(services, parameters, form.controlnet))
    if fields.get("sd_vae") and fields["sd_vae"] not in services.networks.vaes.choices():
        fields.pop("sd_vae")  # a VAE this server does not have: keep the current choice
    updates.update({component: fields[name] for name, component in model.fields.items() if name in fields})
    for name, same in HIRES_OPTION_DEFAULTS.items():  # an option the infotext lacks is the first pass's again
        if name in form.extra_fields and name not in fields:
            updates[form.extra_fields[name]] = same
    if form.extra_fields.get("enable_hr") is not None and "enable_hr" not in fields:
        updates[form.extra_fields["enable_hr"]] = False  # parameters without hires fix turn it off, as in A1111
    if form.styles is not None:  # styles found at the prompts' ends come out of them (A1111's "Apply if any")
        found = styles_from_prompts(services.styles, fields["prompt"], fields["negative_prompt"])
        if found:
            names, updates[form.prompt], updates[form.negative_prompt] = found
            updates[form.styles.dropdown] = gr.Dropdown(choices=style_names(services.styles), value=names)
    if form.extra_fields.get("restore_faces") is not None and "restore_faces" not in fields:
        updates[form.extra_fields["restore_faces"]] = False
    for key in ("model_hash", "model_name"):
        entry = services.models.registry.find(fields[key]) if fields.get(key) else None
        if entry:
            updates[model.checkpoint] = entry.title
            break
    return updates


def seed_extra_updates(fields: dict, form: GenerationForm) -> dict:
    """Variation seed, seed resize and tiling from the infotext; absent ones go back to off, and "Extra" is
    ticked when the image used a variation seed or seed resize, as in A1111."""
    extras = form.seed_extras
    if not extras:
        return {}
    defaults = {"subseed": -1, "subseed_strength": 0, "seed_resize_from_w": 0, "seed_resize_from_h": 0,
                "tiling": False, "tiling_axes": "XY"}
    updates = {extras[name]: fields.get(name, default) for name, default in defaults.items() if name in extras}
    if form.show_seed_extras is not None:
        shown = bool(fields.get("subseed_strength")) or "seed_resize_from_w" in fields
        updates[form.show_seed_extras] = shown
    return updates


class SendTo:
    """Wires "Send to ..." buttons once the target tabs exist."""

    def __init__(self, services: Services, model: ModelControls, tabs: gr.Tabs, txt2img: GenerationForm,
                 img2img, upscale):
        self.services, self.model, self.tabs = services, model, tabs
        self.txt2img, self.img2img, self.upscale = txt2img, img2img, upscale

    def to_upscale(self, button: gr.Button, image_path: gr.Component):
        """The image goes to the Upscale tab's single-image input (A1111's "Send to extras")."""
        tab = self.upscale

        def send(path):
            if not path:
                return {}
            return {tab.single_image: path, tab.source: "single", tab.source_tabs: gr.Tabs(selected="single"),
                    self.tabs: gr.Tabs(selected="upscale")}

        button.click(send, inputs=image_path, outputs=[tab.single_image, tab.source, tab.source_tabs, self.tabs],
                     **PRIVATE)

    def to_txt2img(self, button: gr.Button, infotext: gr.Component):
        def send(text):
            return {**form_updates(self.services, text, self.txt2img, self.model),
                    self.tabs: gr.Tabs(selected="txt2img")}

        button.click(send, inputs=infotext, outputs=form_targets(self.txt2img, self.model) + [self.tabs],
                     **PRIVATE)

    def to_img2img(self, button: gr.Button, image_path: gr.Component, infotext: gr.Component, mode: str):
        """mode: "img2img" or "inpaint" - which sub-tab receives the image."""
        tab = self.img2img

        def send(path, text):
            if not path:
                return {}
            updates = {**form_updates(self.services, text, tab.form, self.model),
                       self.tabs: gr.Tabs(selected="img2img"), tab.modes: gr.Tabs(selected=f"{mode}_mode"),
                       tab.mode: mode}
            if mode == "inpaint":
                updates[tab.inpaint_editor] = editor_with_image(path)
            else:
                updates[tab.init_image] = path
            return updates

        button.click(send, inputs=[image_path, infotext], outputs=form_targets(tab.form, self.model) + [
            self.tabs, tab.modes, tab.mode, tab.inpaint_editor, tab.init_image], **PRIVATE)
