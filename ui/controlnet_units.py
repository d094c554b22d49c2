"""sd-webui-controlnet's "ControlNet" accordion on txt2img and img2img: N unit tabs (the control_net_unit_count
option), each with its image, preprocessor (sliders that follow it, a 💥 preview of the detected map), model and
weights. The units' values become the request's `controlnet_units` (backend.core.controlnet_units)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from backend.controlnet.control_types import control_type
from backend.controlnet.preprocessors import Slider
from backend.core.control_modes import ControlMode, HiresOption, ResizeMode
from backend.core.controlnet_units import MAX_UNITS, parse_unit_infotext
from backend.core.errors import UserError
from backend.core.image_input import open_image
from backend.core.requests import RequestError
from backend.services import Services
from ui.image_upload import image_upload

PRIVATE = {"api_visibility": "private"}
NO_MODEL = "None"


@dataclass
class UnitControls:
    enabled: gr.Checkbox
    image: gr.Image
    mask: gr.Image
    use_input: gr.Checkbox | None  # img2img only: the img2img input is the control image
    control_type: gr.Radio  # filters the preprocessor and model lists (not sent: the module and model are)
    module: gr.Dropdown
    model: gr.Dropdown
    weight: gr.Slider
    guidance_start: gr.Slider
    guidance_end: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    hr_option: gr.Radio | None  # txt2img only: which hires fix pass the unit steers
    pixel_perfect: gr.Checkbox
    processor_res: gr.Slider
    threshold_a: gr.Slider
    threshold_b: gr.Slider
    allow_preview: gr.Checkbox
    preview: gr.Image
    message: gr.HTML

    @property
    def inputs(self) -> list:
        return [c for c in (self.enabled, self.image, self.mask, self.use_input, self.module, self.model,
                            self.weight, self.guidance_start, self.guidance_end, self.control_mode,
                            self.resize_mode, self.hr_option, self.pixel_perfect, self.processor_res,
                            self.threshold_a, self.threshold_b) if c is not None]


@dataclass
class ControlNetControls:
    units: list[UnitControls]

    @property
    def inputs(self) -> set:
        return {component for unit in self.units for component in unit.inputs}

    @property
    def paste_targets(self) -> list:
        """What pasted infotext sets (every unit's fields, disabled ones turned off)."""
        return [c for unit in self.units for c in (
            unit.enabled, unit.control_type, unit.module, unit.model, unit.weight, unit.guidance_start,
            unit.guidance_end, unit.control_mode, unit.resize_mode, unit.pixel_perfect, unit.processor_res,
            unit.threshold_a, unit.threshold_b, unit.message)
            + ((unit.use_input,) if unit.use_input is not None else ())]

    def request_fields(self, values: dict) -> dict:
        """{"controlnet_units": [...]} of the enabled units, each with its tab's index as the infotext's N."""
        units = []
        for slot, unit in enumerate(self.units):
            if not values[unit.enabled]:
                continue
            field = f"controlnet_units.{slot}"
            use_input = unit.use_input is not None and values[unit.use_input]
            image = None if use_input else values[unit.image]
            if not use_input and not image:
                hint = " (or tick \"Use the img2img input\")" if unit.use_input is not None else ""
                raise RequestError(f"{field}.image", f"ControlNet Unit {slot}: upload a control image{hint}")
            model = values[unit.model]
            if model in (None, "", NO_MODEL):
                raise RequestError(f"{field}.model", f"ControlNet Unit {slot}: choose a ControlNet model")
            units.append({
                "module": values[unit.module] or "none", "model": model, "weight": float(values[unit.weight]),
                "image": Path(image).read_bytes() if image else None,
                "mask": Path(values[unit.mask]).read_bytes() if values[unit.mask] else None,
                "resize_mode": values[unit.resize_mode], "control_mode": values[unit.control_mode],
                "processor_res": float(values[unit.processor_res]), "threshold_a": float(values[unit.threshold_a]),
                "threshold_b": float(values[unit.threshold_b]),
                "guidance_start": float(values[unit.guidance_start]),
                "guidance_end": float(values[unit.guidance_end]),
                "pixel_perfect": bool(values[unit.pixel_perfect]), "slot": slot,
                **({"hr_option": values[unit.hr_option]} if unit.hr_option is not None else {})})
        return {"controlnet_units": units} if units else {}


def unit_count(services: Services) -> int:
    return max(1, min(MAX_UNITS, services.options.current.control_net_unit_count))


def family_hint(name: str) -> str:
    """The family a ControlNet's file name suggests (the weights tell it for sure only once loaded)."""
    lowered = name.lower()
    return "sdxl" if "xl" in lowered else "sd2" if "sd21" in lowered or "sd2" in lowered.split("_") else "sd1"


def model_choices(services: Services, refresh: bool = False) -> list[str]:
    """"None", then the models whose names suggest the loaded checkpoint's family, then the others."""
    titles = services.controlnets.model_titles(refresh=refresh)
    loaded = services.models.loaded(None)
    family = loaded.family if loaded is not None else None
    if family:
        titles = sorted(titles, key=lambda title: family_hint(title) != family)
    return [NO_MODEL, *titles]


def slider_update(slider: Slider) -> dict:
    return gr.update(label=slider.label, minimum=slider.minimum, maximum=slider.maximum, step=slider.step,
                     value=slider.value, visible=slider.visible)


def render_message(text: str) -> str:
    return f'<div class="controlnet-message" style="color:#dc2626">{html.escape(text)}</div>' if text else ""


def module_updates(services: Services, module: str | None) -> tuple:
    """Sliders for the chosen preprocessor (its labels, ranges, defaults) and the line under the dropdown: what a
    preprocessor that needs weights still needs."""
    hidden = gr.update(visible=False)
    try:
        preprocessor = services.controlnets.preprocessors.get(module)
    except UserError as error:
        return hidden, hidden, hidden, render_message(error.message)  # shown under the dropdown: no field name
    return (slider_update(preprocessor.resolution), slider_update(preprocessor.slider_1),
            slider_update(preprocessor.slider_2), "")


def preprocessor_labels(services: Services) -> list[str]:
    return services.controlnets.preprocessors.public_names()


def filtered_models(services: Services, tag: str | None, refresh: bool = False) -> list[str]:
    """The model list under the unit's Control Type ("None" first)."""
    titles = model_choices(services, refresh=refresh)[1:]
    return control_type(tag or "All", services.controlnets.preprocessors, titles)["model_list"]


def control_type_updates(services: Services, tag: str) -> tuple:
    """The extension's Control Type filter: the preprocessor and model lists narrowed to `tag`, their defaults
    chosen, and the sliders (and the line under the dropdown) of that default preprocessor."""
    chosen = control_type(tag or "All", services.controlnets.preprocessors, model_choices(services)[1:])
    return (gr.Dropdown(choices=chosen["module_list"], value=chosen["default_option"]),
            gr.Dropdown(choices=chosen["model_list"], value=chosen["default_model"]),
            *module_updates(services, chosen["default_option"]))


def read_rgb(path: str | None, what: str) -> np.ndarray:
    if not path:
        raise RequestError("controlnet_units.image", f"upload {what} first")
    return np.asarray(open_image(Path(path).read_bytes()).convert("RGB"))


def build_unit(services: Services, prefix: str, index: int, img2img: bool) -> UnitControls:
    key = f"{prefix}_controlnet_unit_{index}"
    modules = preprocessor_labels(services)
    with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{key}_tab"):
        with gr.Row():
            with gr.Column(min_width=160):
                image = image_upload("Image", f"{key}_image", sources=["upload", "clipboard"], height=260)
            with gr.Column(visible=False, min_width=160, elem_id=f"{key}_preview_column") as preview_column:
                preview = gr.Image(label="Preprocessor Preview", type="numpy", interactive=False, height=260,
                                   elem_id=f"{key}_preview", format="png")
                send_map = gr.Button("Use the detected map as the image", size="sm", elem_id=f"{key}_send_map")
        with gr.Accordion("Mask (optional)", open=False, elem_id=f"{key}_mask_accordion"):
            mask = image_upload("Mask", f"{key}_mask", sources=["upload", "clipboard"], height=200)
        with gr.Row():
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{key}_enable", min_width=80)
            use_input = gr.Checkbox(label="Use the img2img input", value=False, elem_id=f"{key}_use_input",
                                    min_width=160) if img2img else None
            pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{key}_pixel_perfect",
                                        min_width=110)
            allow_preview = gr.Checkbox(label="Allow Preview", value=False, elem_id=f"{key}_allow_preview",
                                        min_width=110)
        control_type_radio = gr.Radio(label="Control Type", choices=services.controlnets.preprocessors.tags(),
                                      value="All", elem_id=f"{key}_control_type", elem_classes="controlnet-type")
        with gr.Row(equal_height=True):
            module = gr.Dropdown(label="Preprocessor", choices=modules, value="none", elem_id=f"{key}_module",
                                 scale=4, min_width=120)
            run_preview = gr.Button("💥", elem_id=f"{key}_run_preview", scale=0, min_width=50)
        message = gr.HTML(elem_id=f"{key}_message", elem_classes="controlnet-message-line")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(label="Model", choices=model_choices(services), value=NO_MODEL,
                                elem_id=f"{key}_model", scale=4, min_width=120)
            refresh = gr.Button("🔄", elem_id=f"{key}_refresh_models", scale=0, min_width=50)
        with gr.Row():
            weight = gr.Slider(label="Control Weight", minimum=0, maximum=2, step=0.05, value=1.0,
                               elem_id=f"{key}_weight")
            start = gr.Slider(label="Starting Control Step", minimum=0, maximum=1, step=0.01, value=0,
                              elem_id=f"{key}_guidance_start")
            end = gr.Slider(label="Ending Control Step", minimum=0, maximum=1, step=0.01, value=1,
                            elem_id=f"{key}_guidance_end")
        none = services.controlnets.preprocessors.get("none")
        with gr.Row():
            resolution = gr.Slider(**slider_options(none.resolution), elem_id=f"{key}_processor_res")
            threshold_a = gr.Slider(**slider_options(none.slider_1), elem_id=f"{key}_threshold_a")
            threshold_b = gr.Slider(**slider_options(none.slider_2), elem_id=f"{key}_threshold_b")
        control_mode = gr.Radio(label="Control Mode", choices=[mode.value for mode in ControlMode],
                                value=ControlMode.BALANCED.value, elem_id=f"{key}_control_mode")
        resize_mode = gr.Radio(label="Resize Mode", choices=[mode.value for mode in ResizeMode],
                               value=ResizeMode.CROP_AND_RESIZE.value, elem_id=f"{key}_resize_mode")
        # txt2img: shown while "Hires. fix" is ticked (the extension's place for it)
        hr_option = None if img2img else gr.Radio(
            label="Hires-Fix Option", choices=[option.value for option in HiresOption], value=HiresOption.BOTH.value,
            visible=False, elem_id=f"{key}_hr_option",
            info="Which pass of the hires fix the unit steers")

    control_type_radio.input(lambda tag: control_type_updates(services, tag), inputs=control_type_radio,
                             outputs=[module, model, resolution, threshold_a, threshold_b, message],
                             show_progress="hidden", **PRIVATE)
    # .input, not .change: pasted infotext sets the module and its own slider values together
    module.input(lambda name: module_updates(services, name), inputs=module,
                  outputs=[resolution, threshold_a, threshold_b, message], show_progress="hidden", **PRIVATE)
    refresh.click(lambda chosen, tag: gr.Dropdown(choices=filtered_models(services, tag, refresh=True),
                                                  value=chosen),
                  inputs=[model, control_type_radio], outputs=model, **PRIVATE)
    allow_preview.change(lambda shown: gr.Column(visible=shown), inputs=allow_preview, outputs=preview_column,
                         show_progress="hidden", **PRIVATE)

    def detect(path, mask_path, name, res, first, second):
        """The detected map, or why there is none (under the dropdown, not a toast)."""
        try:
            pixels = read_rgb(path, "a control image")
            mask_pixels = np.asarray(open_image(Path(mask_path).read_bytes()).convert("L")) if mask_path else None
            detected = services.controlnets.detect(name, pixels, res, first, second, mask=mask_pixels).pixels
        except (UserError, OSError) as error:
            text = error.message if isinstance(error, UserError) else f"the image cannot be read: {error}"
            return gr.update(), gr.Column(visible=True), True, render_message(text)
        return detected, gr.Column(visible=True), True, ""

    run_preview.click(detect, inputs=[image, mask, module, resolution, threshold_a, threshold_b],
                      outputs=[preview, preview_column, allow_preview, message], **PRIVATE)

    def send(detected):
        """The map becomes the unit's image; it is already detected, so the preprocessor is "none"."""
        if detected is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), render_message(
                "press 💥 to detect a map first")
        return (detected, "none", *module_updates(services, "none"))

    send_map.click(send, inputs=preview, outputs=[image, module, resolution, threshold_a, threshold_b, message],
                   **PRIVATE)
    return UnitControls(enabled, image, mask, use_input, control_type_radio, module, model, weight, start, end,
                        control_mode, resize_mode, hr_option, pixel_perfect, resolution, threshold_a, threshold_b,
                        allow_preview, preview, message)


def slider_options(slider: Slider) -> dict:
    return {"label": slider.label, "minimum": slider.minimum, "maximum": slider.maximum, "step": slider.step,
            "value": slider.value, "visible": slider.visible}


def build_controlnet_accordion(services: Services, prefix: str, img2img: bool = False,
                               hires_fix: gr.Checkbox | None = None) -> ControlNetControls:
    """`hires_fix`: txt2img's "Hires. fix" checkbox; the units' Hires-Fix Option shows while it is ticked."""
    with gr.Accordion("ControlNet", open=False, elem_id=f"{prefix}_controlnet"), gr.Tabs():
        units = [build_unit(services, prefix, index, img2img) for index in range(unit_count(services))]
    hr_options = [unit.hr_option for unit in units if unit.hr_option is not None]
    if hires_fix is not None and hr_options:
        hires_fix.change(lambda enabled: [gr.Radio(visible=bool(enabled)) for _ in hr_options], inputs=hires_fix,
                         outputs=hr_options, show_progress="hidden", **PRIVATE)
    # a model added to the folder shows when the list is opened, as the checkpoint lists do
    for unit in units:
        unit.model.focus(lambda chosen, tag: gr.Dropdown(choices=filtered_models(services, tag), value=chosen),
                         inputs=[unit.model, unit.control_type], outputs=unit.model, show_progress="hidden",
                         **PRIVATE)
    return ControlNetControls(units)


def number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def paste_updates(services: Services, parameters: dict, controls: ControlNetControls | None) -> dict:
    """From an infotext's "ControlNet N" lines: unit N enabled with its fields; units it does not name off."""
    if controls is None:
        return {}
    updates: dict = {}
    catalog = services.controlnets.preprocessors.by_name()
    for slot, unit in enumerate(controls.units):
        text = parameters.get(f"ControlNet {slot}")
        updates[unit.enabled] = bool(text)
        if not text:
            continue
        fields = parse_unit_infotext(str(text))
        found = catalog.get(str(fields.get("module", "none")))
        module = found.public_name if found is not None else "none"
        updates[unit.control_type] = "All"  # the pasted module and model may be outside the unit's filter
        updates[unit.module] = gr.update(choices=preprocessor_labels(services), value=module)
        sliders = dict(zip(("processor_res", "threshold_a", "threshold_b"), module_updates(services, module),
                           strict=False))
        updates[unit.message] = module_updates(services, module)[3]
        try:
            model = services.controlnets.folder.find(str(fields.get("model", ""))).title
        except UserError as error:  # a model this server lacks: the unit says which
            model = NO_MODEL
            updates[unit.message] = render_message(error.message)
        updates[unit.model] = gr.update(choices=model_choices(services), value=model)
        for name, component in (("processor_res", unit.processor_res), ("threshold_a", unit.threshold_a),
                                ("threshold_b", unit.threshold_b)):
            update = sliders[name]
            if number(fields.get(name)) and update.get("visible", True):
                update = {**update, "value": fields[name]}
            updates[component] = update
        for name, component in (("weight", unit.weight), ("guidance_start", unit.guidance_start),
                                ("guidance_end", unit.guidance_end)):
            if number(fields.get(name)):
                updates[component] = fields[name]
        if fields.get("resize_mode") in {mode.value for mode in ResizeMode}:
            updates[unit.resize_mode] = fields["resize_mode"]
        if fields.get("control_mode") in {mode.value for mode in ControlMode}:
            updates[unit.control_mode] = fields["control_mode"]
        if isinstance(fields.get("pixel_perfect"), bool):
            updates[unit.pixel_perfect] = fields["pixel_perfect"]
        if unit.use_input is not None:
            updates[unit.use_input] = False
    return updates
