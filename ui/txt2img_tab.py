"""The txt2img tab, with A1111's hires fix."""
from __future__ import annotations

import gradio as gr

from backend.core.requests import (
    CFG_RANGE,
    HR_RESIZE_RANGE,
    LATENT_UPSCALE_MODES,
    MAX_PROMPT_CHARACTERS,
    STEPS_RANGE,
    Txt2ImgRequest,
)
from backend.core.samplers import SAMPLERS, SCHEDULE_NAMES
from backend.services import Services
from ui.controlnet_units import build_controlnet_accordion
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
from ui.refiner_controls import build_refiner_controls
from ui.script_menu import build_script_menu
from ui.styles import build_style_editor, build_style_picker


def hires_upscaler_choices(services: Services) -> list[str]:
    return [*LATENT_UPSCALE_MODES, *services.upscalers.names()]


def build_hires_controls(services: Services, extra_samplers=()) -> dict[str, gr.Component]:
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
        with gr.Row():  # A1111 1.6+: the second pass's own checkpoint, sampler, schedule and CFG
            checkpoint = gr.Dropdown(label="Hires checkpoint", choices=hires_checkpoint_choices(services),
                                     value=SAME_CHECKPOINT, elem_id="txt2img_hr_checkpoint")
            sampler = gr.Dropdown(label="Hires sampling method", choices=[SAME_SAMPLER, *SAMPLERS, *extra_samplers],
                                  value=SAME_SAMPLER, elem_id="txt2img_hr_sampler")
            schedule = gr.Dropdown(label="Hires schedule type", choices=[SAME_SCHEDULE, *SCHEDULE_NAMES],
                                   value=SAME_SCHEDULE, elem_id="txt2img_hr_scheduler")
        cfg = gr.Slider(label="Hires CFG Scale", minimum=0, maximum=CFG_RANGE[1], step=0.5, value=0,
                        info="0: the same as CFG scale", elem_id="txt2img_hr_cfg")
        with gr.Row():
            prompt = gr.Textbox(label="Hires prompt", lines=2, placeholder="Leave empty to use the same prompt",
                                max_length=MAX_PROMPT_CHARACTERS, elem_id="txt2img_hires_prompt")
            negative = gr.Textbox(label="Hires negative prompt", lines=2, max_length=MAX_PROMPT_CHARACTERS,
                                  placeholder="Leave empty to use the same negative prompt",
                                  elem_id="txt2img_hires_neg_prompt")
    return {"enable_hr": enable, "hr_upscaler": upscaler, "hr_second_pass_steps": steps,
            "denoising_strength": strength, "hr_scale": scale, "hr_resize_x": resize_x, "hr_resize_y": resize_y,
            "hr_checkpoint_name": checkpoint, "hr_sampler_name": sampler, "hr_scheduler": schedule, "hr_cfg": cfg,
            "hr_prompt": prompt,
            "hr_negative_prompt": negative}


SAME_SAMPLER, SAME_SCHEDULE = "Use same sampler", "Use same scheduler"  # A1111's choices for "as the first pass"
SAME_CHECKPOINT = "Use same checkpoint"


def hires_checkpoint_choices(services: Services) -> list[str]:
    return [SAME_CHECKPOINT, *(entry.title for entry in services.models.list_checkpoints())]


def hires_fields(values: dict, controls: dict[str, gr.Component]) -> dict:
    if not values[controls["enable_hr"]]:
        return {}
    sampler, schedule, cfg, checkpoint = (values[controls[name]] for name in (
        "hr_sampler_name", "hr_scheduler", "hr_cfg", "hr_checkpoint_name"))
    return {"enable_hr": True, "hr_upscaler": values[controls["hr_upscaler"]],
            "hr_second_pass_steps": int(values[controls["hr_second_pass_steps"]]),
            "denoising_strength": float(values[controls["denoising_strength"]]),
            "hr_scale": float(values[controls["hr_scale"]]), "hr_resize_x": int(values[controls["hr_resize_x"]]),
            "hr_resize_y": int(values[controls["hr_resize_y"]]),
            "hr_checkpoint_name": None if checkpoint in (None, SAME_CHECKPOINT) else checkpoint,
            "hr_sampler_name": None if sampler in (None, SAME_SAMPLER) else sampler,
            "hr_scheduler": None if schedule in (None, SAME_SCHEDULE) else schedule,
            "hr_cfg": float(cfg) if cfg else None, "hr_prompt": values[controls["hr_prompt"]] or "",
            "hr_negative_prompt": values[controls["hr_negative_prompt"]] or ""}


def build_txt2img_tab(services: Services, model: ModelControls, size: tuple[int, int] | None) -> GenerationForm:
    top = build_prompt_row("txt2img", lambda: build_style_picker(services.styles, "txt2img"))
    build_style_editor(services.styles, "txt2img", top["styles"], top["prompt"], top["negative_prompt"])
    build_extra_networks(services, "txt2img", top["prompt"])
    with gr.Row():
        with gr.Column():
            sampling = build_sampling_controls("txt2img", size, services.extensions.hooks.samplers)
            form = GenerationForm(prefix="txt2img", **top, **sampling)
            restore_faces = build_restore_faces("txt2img")
            hires = build_hires_controls(services, services.extensions.hooks.samplers)
            form.extra_fields = {**hires, "restore_faces": restore_faces}
            form.refiner = build_refiner_controls(services, "txt2img")
            form.controlnet = build_controlnet_accordion(services, "txt2img", hires_fix=hires["enable_hr"])
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
    hires["hr_checkpoint_name"].focus(lambda: gr.Dropdown(choices=hires_checkpoint_choices(services)), None,
                                      hires["hr_checkpoint_name"], **PRIVATE)
    return form
