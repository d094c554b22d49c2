"""The txt2img tab, with A1111's hires fix."""
from __future__ import annotations

import gradio as gr

from backend.core.requests import HR_RESIZE_RANGE, LATENT_UPSCALE_MODES, STEPS_RANGE, Txt2ImgRequest
from backend.services import Services
from ui.extension_sections import build_sections
from ui.extra_networks import build_extra_networks
from ui.generation_form import (
    PRIVATE,
    GenerationForm,
    build_prompt_row,
    build_restore_faces,
    build_results,
    build_sampling_controls,
    wire_generation,
)
from ui.model_picker import ModelControls
from ui.script_menu import build_script_menu
from ui.styles import build_style_editor, build_style_picker


def hires_upscaler_choices(services: Services) -> list[str]:
    return [*LATENT_UPSCALE_MODES, *services.upscalers.names()]


def build_hires_controls(services: Services) -> dict[str, gr.Component]:
    """Hires fix controls, keyed by the Txt2ImgRequest field each one sets."""
    defaults = Txt2ImgRequest.model_fields
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        enable = gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(label="Upscaler", choices=hires_upscaler_choices(services),
                                   value=defaults["hr_upscaler"].default, elem_id="txt2img_hr_upscaler")
            steps = gr.Slider(label="Hires steps", minimum=0, maximum=STEPS_RANGE[1], step=1,
                              value=defaults["hr_second_pass_steps"].default, elem_id="txt2img_hires_steps")
            strength = gr.Slider(label="Denoising strength", minimum=0, maximum=1, step=0.01,
                                 value=defaults["denoising_strength"].default, elem_id="txt2img_denoising_strength")
        with gr.Row():
            scale = gr.Slider(label="Upscale by", minimum=1, maximum=4, step=0.05,
                              value=defaults["hr_scale"].default, elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(label="Resize width to", minimum=HR_RESIZE_RANGE[0], maximum=HR_RESIZE_RANGE[1],
                                 step=8, value=0, elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(label="Resize height to", minimum=HR_RESIZE_RANGE[0], maximum=HR_RESIZE_RANGE[1],
                                 step=8, value=0, elem_id="txt2img_hr_resize_y")
    return {"enable_hr": enable, "hr_upscaler": upscaler, "hr_second_pass_steps": steps,
            "denoising_strength": strength, "hr_scale": scale, "hr_resize_x": resize_x, "hr_resize_y": resize_y}


def hires_fields(values: dict, controls: dict[str, gr.Component]) -> dict:
    if not values[controls["enable_hr"]]:
        return {}
    return {"enable_hr": True, "hr_upscaler": values[controls["hr_upscaler"]],
            "hr_second_pass_steps": int(values[controls["hr_second_pass_steps"]]),
            "denoising_strength": float(values[controls["denoising_strength"]]),
            "hr_scale": float(values[controls["hr_scale"]]), "hr_resize_x": int(values[controls["hr_resize_x"]]),
            "hr_resize_y": int(values[controls["hr_resize_y"]])}


def build_txt2img_tab(services: Services, model: ModelControls, size: tuple[int, int] | None) -> GenerationForm:
    top = build_prompt_row("txt2img", lambda: build_style_picker(services.styles, "txt2img"))
    build_style_editor(services.styles, "txt2img", top["styles"], top["prompt"], top["negative_prompt"])
    build_extra_networks(services, "txt2img", top["prompt"])
    with gr.Row():
        with gr.Column():
            sampling = build_sampling_controls("txt2img", size, services.extensions.hooks.samplers)
            form = GenerationForm(prefix="txt2img", **top, **sampling)
            restore_faces = build_restore_faces("txt2img")
            hires = build_hires_controls(services)
            form.extra_fields = {**hires, "restore_faces": restore_faces}
            form.extension_inputs = build_sections(services, "txt2img")
            form.scripts = build_script_menu(services, "txt2img")
        with gr.Column():
            build_results(form)
            with gr.Row():
                form.send_to_img2img = gr.Button("Send to img2img", elem_id="txt2img_send_img2img")
                form.send_to_inpaint = gr.Button("Send to inpaint", elem_id="txt2img_send_inpaint")
                form.send_to_upscale = gr.Button("Send to upscale", elem_id="txt2img_send_upscale")
    wire_generation(services, form, form.inputs | set(form.extra_fields.values()) | model.inputs,
                    lambda values: services.build_request(Txt2ImgRequest, {
                        **form.common_fields(values, model), **hires_fields(values, hires),
                        "restore_faces": bool(values[restore_faces])}))
    # The list of image upscalers can change (new files, 🔄 in the Upscale tab); refresh it when opened.
    hires["hr_upscaler"].focus(lambda: gr.Dropdown(choices=hires_upscaler_choices(services)), None,
                               hires["hr_upscaler"], **PRIVATE)
    return form
