"""The ControlNet accordion in process (no browser): its units' values become the typed request's
`controlnet_units`, pasted infotext fills the units, the sliders follow the preprocessor, and the unit count is
the control_net_unit_count option."""
from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image, ImageDraw

from backend.core.control_modes import ControlMode, HiresOption, ResizeMode
from backend.core.controlnet_units import ControlNetUnit, unit_infotext
from backend.core.image_input import open_image
from backend.core.requests import RequestError, Txt2ImgRequest
from tools.tiny_controlnets import write_tiny_controlnet
from ui.controlnet_units import (
    NO_MODEL,
    build_controlnet_accordion,
    control_type_updates,
    filtered_models,
    module_updates,
    paste_updates,
)


@pytest.fixture
def services(make_services, models_dir):
    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_canny.safetensors", "sd1", seed=1)
    return make_services()


@pytest.fixture
def circle(tmp_path):
    path = tmp_path / "circle.png"
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill="black")
    image.save(path)
    return str(path)


def build(services, prefix="txt2img", img2img=False):
    with gr.Blocks():
        return build_controlnet_accordion(services, prefix, img2img=img2img)


def form_values(controls) -> dict:
    """Every unit's component at the value the page starts with."""
    return {component: component.value for component in controls.inputs}


def test_enabled_units_become_the_typed_request_with_their_tab_as_slot(services, circle):
    controls = build(services)
    assert len(controls.units) == 3
    title = services.controlnets.model_titles()[0]
    unit = controls.units[1]
    values = form_values(controls) | {
        unit.enabled: True, unit.image: circle, unit.module: "canny", unit.model: title, unit.weight: 0.5,
        unit.guidance_start: 0.1, unit.guidance_end: 0.8, unit.processor_res: 64, unit.threshold_a: 50,
        unit.threshold_b: 120, unit.control_mode: "ControlNet is more important", unit.resize_mode: "Just Resize",
        unit.pixel_perfect: True}
    request = services.build_request(Txt2ImgRequest, {"prompt": "a cat", **controls.request_fields(values)})
    assert len(request.controlnet_units) == 1  # units 0 and 2 are off
    sent = request.controlnet_units[0]
    assert (sent.slot, sent.module, sent.model, sent.weight) == (1, "canny", title, 0.5)
    assert (sent.guidance_start, sent.guidance_end, sent.processor_res, sent.threshold_a, sent.threshold_b) == (
        0.1, 0.8, 64, 50, 120)
    assert sent.control_mode is ControlMode.CONTROLNET_MORE_IMPORTANT and sent.resize_mode is ResizeMode.JUST_RESIZE
    assert sent.pixel_perfect is True and sent.mask is None
    assert open_image(sent.image).convert("RGB").getpixel((32, 32)) == (0, 0, 0)  # the uploaded circle


def test_a_unit_without_image_or_model_names_its_field(services, circle):
    controls = build(services)
    unit = controls.units[2]
    values = form_values(controls) | {unit.enabled: True, unit.model: services.controlnets.model_titles()[0]}
    with pytest.raises(RequestError) as missing_image:
        controls.request_fields(values)
    assert missing_image.value.field == "controlnet_units.2.image"
    with pytest.raises(RequestError) as missing_model:
        controls.request_fields(values | {unit.image: circle, unit.model: NO_MODEL})
    assert missing_model.value.field == "controlnet_units.2.model"


def test_img2img_units_can_use_the_img2img_input(services):
    controls = build(services, "img2img", img2img=True)
    unit = controls.units[0]
    values = form_values(controls) | {unit.enabled: True, unit.use_input: True,
                                      unit.model: services.controlnets.model_titles()[0]}
    fields = controls.request_fields(values)
    assert fields["controlnet_units"][0]["image"] is None  # the backend uses the img2img input
    assert build(services).units[0].use_input is None  # txt2img has no img2img input


def test_pasted_infotext_fills_the_named_units_and_turns_the_others_off(services):
    controls = build(services)
    title = services.controlnets.model_titles()[0]
    unit = ControlNetUnit(module="canny", model=title, weight=0.75, guidance_end=0.5,
                          control_mode="My prompt is more important", resize_mode="Resize and Fill")
    parameters = {"ControlNet 1": unit_infotext("canny", title, unit, 256, 40.0, 180.0)}
    updates = paste_updates(services, parameters, controls)
    first, second = controls.units[0], controls.units[1]
    assert updates[first.enabled] is False and updates[second.enabled] is True
    assert updates[second.module]["value"] == "canny" and updates[second.model]["value"] == title
    assert updates[second.control_type] == "All"  # the lists unfiltered, so the pasted names are in them
    assert "depth_midas" in updates[second.module]["choices"]
    assert updates[second.weight] == 0.75 and updates[second.guidance_end] == 0.5
    assert updates[second.control_mode] == "My prompt is more important"
    assert updates[second.resize_mode] == "Resize and Fill"
    assert updates[second.threshold_a]["value"] == 40.0 and updates[second.threshold_a]["label"] == "Low Threshold"
    assert updates[second.processor_res]["value"] == 256
    missing = paste_updates(services, {"ControlNet 0": parameters["ControlNet 1"].replace(title, "other [1234]")},
                            controls)
    assert missing[first.model]["value"] == NO_MODEL and "unknown ControlNet model" in missing[first.message]


def test_sliders_follow_the_preprocessor_and_weighted_ones_say_what_they_need(services):
    resolution, first, second, message = module_updates(services, "canny")
    assert (first["label"], first["minimum"], first["maximum"], first["value"]) == ("Low Threshold", 1, 255, 100)
    assert second["label"] == "High Threshold" and resolution["visible"] is True and message == ""
    resolution, first, second, message = module_updates(services, "depth_midas")
    assert resolution["visible"] is first["visible"] is second["visible"] is False
    assert "needs" in message and "dpt_hybrid-midas" in message


def test_the_unit_count_is_the_option(services):
    services.options.update({"control_net_unit_count": 2})
    assert len(build(services).units) == 2
    assert len(build(services, "img2img", img2img=True).units) == 2


def values_of(dropdown) -> list[str]:
    return [value for _, value in dropdown.choices]


def test_control_type_filters_preprocessors_and_models_as_the_extension(services, models_dir):
    write_tiny_controlnet(models_dir / "ControlNet" / "control_v11p_sd15_scribble.safetensors", "sd1", seed=2)
    canny_model, scribble_model = sorted(services.controlnets.model_titles(refresh=True))
    module, model, resolution, first, _, message = control_type_updates(services, "Canny")
    assert values_of(module) == ["none", "canny", "invert (from white bg & black line)"] and module.value == "canny"
    assert values_of(model) == [NO_MODEL, canny_model] and model.value == canny_model
    assert first["label"] == "Low Threshold" and message == ""  # canny's own sliders
    module, model, *_ = control_type_updates(services, "Scribble")
    assert "scribble_xdog" in values_of(module) and "canny" not in values_of(module)
    assert values_of(model) == [NO_MODEL, scribble_model] and model.value == scribble_model
    module, model, *_ = control_type_updates(services, "Inpaint")
    assert values_of(module)[1:] and all("inpaint" in name for name in values_of(module)[1:])
    assert values_of(model) == [NO_MODEL] and model.value == NO_MODEL  # no inpaint model in the folder
    module, model, *_ = control_type_updates(services, "All")
    assert module.value == "none" and len(values_of(model)) == 3
    assert filtered_models(services, "Canny") == [NO_MODEL, canny_model]


def test_txt2img_units_send_their_hires_fix_option(services, circle):
    controls = build(services)
    unit = controls.units[0]
    assert unit.hr_option.visible is False  # shown once "Hires. fix" is ticked
    values = form_values(controls) | {unit.enabled: True, unit.image: circle, unit.module: "canny",
                                      unit.model: services.controlnets.model_titles()[0],
                                      unit.hr_option: "Low res only"}
    request = services.build_request(Txt2ImgRequest, {"prompt": "a cat", **controls.request_fields(values)})
    assert request.controlnet_units[0].hr_option is HiresOption.LOW_RES_ONLY
    assert build(services, "img2img", img2img=True).units[0].hr_option is None  # img2img has no hires fix
