"""The img2img tab: img2img, Inpaint (mask drawn in the browser), Inpaint upload and Outpaint."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from backend.core.requests import Img2ImgBatchRequest, Img2ImgRequest, RequestError
from backend.generation.image_ops import MASK_MODES, MASKED_CONTENT, RESIZE_MODES
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
from ui.image_upload import image_upload
from ui.img2img_batch import build_batch_inputs
from ui.model_picker import ModelControls
from ui.refiner_controls import build_refiner_controls
from ui.script_menu import build_script_menu
from ui.styles import build_style_editor, build_style_picker
from ui.tab_choice import build_tab_choice, follow_tab

MODES = ("img2img", "inpaint", "inpaint_upload", "outpaint", "batch")
# The mask is painted translucent, so the picture shows through it and it shows on any picture (white included).
MASK_COLOUR = ("#ff2a8c", 0.5)
BRUSH_FRACTION = 1 / 20  # the brush's radius, of the image's smaller side (A1111 sizes its brush to the image)
DEFAULT_BRUSH_SIZE = 12  # until an image is loaded


def mask_brush(size: int) -> gr.Brush:
    return gr.Brush(default_size=size, colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed")


def brush_size(image_size: tuple[int, int]) -> int:
    return max(2, round(min(image_size) * BRUSH_FRACTION))


def brush_for(value: dict | None):
    """The brush and eraser sized to the image just loaded into the editor."""
    background = (value or {}).get("background")
    if background is None:
        return gr.update()
    size = brush_size(background.size)
    # the class tells the page (and its tests) that the brush now fits the loaded image
    return gr.ImageEditor(brush=mask_brush(size), eraser=gr.Eraser(default_size=size), elem_classes=["brush-sized"])


def editor_with_image(path: str) -> gr.ImageEditor:
    """The editor showing the image at `path` (one of our outputs, sent from another tab), brush sized to it."""
    try:
        with Image.open(path) as image:  # the header only
            size = brush_size(image.size)
    except (OSError, ValueError, Image.DecompressionBombError):
        size = DEFAULT_BRUSH_SIZE  # the editor will say it cannot show the file
    return gr.ImageEditor(value={"background": path, "layers": [], "composite": path}, brush=mask_brush(size),
                          eraser=gr.Eraser(default_size=size))


@dataclass
class Img2ImgTab:
    form: GenerationForm
    modes: gr.Tabs
    mode: gr.Textbox
    init_image: gr.Image
    inpaint_editor: gr.ImageEditor


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def file_bytes(path: str | None, field: str, what: str) -> bytes:
    if not path:
        raise RequestError(field, f"upload {what} first")
    return Path(path).read_bytes()


def editor_image_and_mask(value: dict | None) -> tuple[bytes, bytes]:
    """The ImageEditor's background is the image; whatever was painted on its layers is the mask."""
    if not value or value.get("background") is None:
        raise RequestError("init_image", "upload an image to inpaint first")
    background = value["background"]
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        alpha = np.asarray(layer.convert("RGBA").resize(background.size))[..., 3]
        painted |= alpha > 0
    mask = Image.fromarray((painted * 255).astype(np.uint8), "L")
    return png_bytes(background.convert("RGB")), png_bytes(mask)


# Image inputs are file paths that Gradio does not open (ui.image_upload): the request decodes, checks and
# re-encodes the file itself (backend.core.image_input), so an oversized image is refused before decoding.


def build_img2img_tab(services: Services, model: ModelControls, size: tuple[int, int] | None) -> Img2ImgTab:
    top = build_prompt_row("img2img", lambda: build_style_picker(services.styles, "img2img"))
    build_style_editor(services.styles, "img2img", top["styles"], top["prompt"], top["negative_prompt"])
    build_extra_networks(services, "img2img", top["prompt"])
    with gr.Row():
        with gr.Column():
            mode = build_tab_choice("img2img", "img2img_chosen_mode")
            with gr.Tabs(elem_id="img2img_modes") as modes:
                with gr.Tab("img2img", id="img2img_mode") as img2img_tab:
                    init_image = image_upload("Image", "img2img_image", sources=["upload", "clipboard"], height=420)
                with gr.Tab("Inpaint", id="inpaint_mode") as inpaint_tab:
                    editor = gr.ImageEditor(
                        label="Image - paint the area to change", type="pil", elem_id="img2img_inpaint_editor",
                        sources=["upload", "clipboard"], height=420, layers=False, transforms=(),
                        brush=mask_brush(DEFAULT_BRUSH_SIZE), eraser=gr.Eraser(default_size=DEFAULT_BRUSH_SIZE))
                    gr.HTML(elem_id="img2img_inpaint_editor_status", elem_classes="upload-status")
                with gr.Tab("Inpaint upload", id="inpaint_upload_mode") as upload_tab, gr.Row():
                    with gr.Column(min_width=160):  # each input with its line beneath, side by side
                        upload_image = image_upload("Image", "img2img_upload_image")
                    with gr.Column(min_width=160):
                        upload_mask = image_upload("Mask (white = repaint)", "img2img_upload_mask")
                with gr.Tab("Outpaint", id="outpaint_mode") as outpaint_tab:
                    outpaint_image = image_upload("Image", "img2img_outpaint_image")
                    with gr.Row():
                        margins = [gr.Slider(label=f"Extend {side} (px)", minimum=0, maximum=512, step=8, value=0,
                                             elem_id=f"img2img_outpaint_{side}")
                                   for side in ("left", "right", "up", "down")]
                with gr.Tab("Batch", id="batch_mode") as batch_tab:
                    batch = build_batch_inputs(services)
            for tab, name in ((img2img_tab, "img2img"), (inpaint_tab, "inpaint"), (upload_tab, "inpaint_upload"),
                              (outpaint_tab, "outpaint"), (batch_tab, "batch")):
                follow_tab(tab, mode, name)
            resize_mode = gr.Radio(list(RESIZE_MODES), type="index", value=RESIZE_MODES[0], label="Resize mode",
                                   elem_id="img2img_resize_mode")
            sampling = build_sampling_controls("img2img", size, services.extensions.hooks.samplers)
            restore_faces = build_restore_faces("img2img")
            strength = gr.Slider(label="Denoising strength", minimum=0, maximum=1, step=0.01, value=0.75,
                                 elem_id="img2img_denoising_strength")
            with gr.Accordion("Inpaint options", open=False, elem_id="img2img_inpaint_options"):
                mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4,
                                      elem_id="img2img_mask_blur")
                mask_mode = gr.Radio(list(MASK_MODES), type="index", value=MASK_MODES[0], label="Mask mode",
                                     elem_id="img2img_mask_mode")
                masked_content = gr.Radio(list(MASKED_CONTENT), type="index", value="original",
                                          label="Masked content", elem_id="img2img_masked_content")
                with gr.Row():
                    inpaint_area = gr.Radio(["Whole picture", "Only masked"], type="index", value="Whole picture",
                                            label="Inpaint area", elem_id="img2img_inpaint_area")
                    padding = gr.Slider(label="Only masked padding, pixels", minimum=0, maximum=256, step=4,
                                        value=32, elem_id="img2img_padding")
            refiner = build_refiner_controls(services, "img2img")
            controlnet = build_controlnet_accordion(services, "img2img", img2img=True)
            sections = build_sections(services, "img2img")
            scripts = build_script_menu(services, "img2img")
        with gr.Column():
            form = GenerationForm(prefix="img2img", **top, **sampling, refiner=refiner, controlnet=controlnet)
            form.extension_inputs = sections
            form.scripts = scripts
            form.extra_fields = {"restore_faces": restore_faces}
            build_results(form)
            form.send_to_upscale = gr.Button("Send to upscale", elem_id="img2img_send_upscale")

    image_inputs = {mode, init_image, editor, upload_image, upload_mask, outpaint_image, resize_mode, strength,
                    mask_blur, mask_mode, masked_content, inpaint_area, padding, restore_faces, *margins,
                    *batch.inputs}

    def request_from(values: dict) -> Img2ImgRequest:
        chosen = values[mode]
        fields = {**form.common_fields(values, model), "denoising_strength": float(values[strength]),
                  "resize_mode": values[resize_mode], "mask_blur": int(values[mask_blur]),
                  "inpainting_mask_invert": values[mask_mode], "inpainting_fill": values[masked_content],
                  "inpaint_full_res": values[inpaint_area] == 1, "inpaint_full_res_padding": int(values[padding]),
                  "restore_faces": bool(values[restore_faces])}
        if chosen == "img2img":
            fields["init_image"] = file_bytes(values[init_image], "init_image", "an image")
        elif chosen == "inpaint":
            fields["init_image"], fields["mask"] = editor_image_and_mask(values[editor])
        elif chosen == "batch":
            fields |= batch.fields(values, services.settings.server_folders_refused)
            return services.build_request(Img2ImgBatchRequest, fields)
        elif chosen == "inpaint_upload":
            fields["init_image"] = file_bytes(values[upload_image], "init_image", "an image")
            fields["mask"] = file_bytes(values[upload_mask], "mask", "a mask image")
        else:
            fields["init_image"] = file_bytes(values[outpaint_image], "init_image", "an image")
            for side, slider in zip(("left", "right", "up", "down"), margins):
                fields[f"outpaint_{side}"] = int(values[slider])
            if not any(fields[f"outpaint_{side}"] for side in ("left", "right", "up", "down")):
                # without margins this would silently be plain img2img
                raise RequestError("outpaint_left/right/up/down", "all four margins are 0: set Extend left, right, "
                                   "up or down to the pixels to add (the img2img tab changes an image without "
                                   "extending it)")
        return services.build_request(Img2ImgRequest, fields)

    wire_generation(services, form, form.inputs | image_inputs | model.inputs, request_from)
    editor.upload(brush_for, inputs=editor, outputs=editor, show_progress="hidden", **PRIVATE)
    return Img2ImgTab(form=form, modes=modes, mode=mode, init_image=init_image, inpaint_editor=editor)
