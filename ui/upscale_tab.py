"""The Upscale tab (A1111's "Extras"): one image, several images, or a folder on the server, scaled by a
factor or to a size, with Upscaler 1 and optionally Upscaler 2 blended in, then faces restored (GFPGAN)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from backend.core.requests import EXTRAS_SCALE_MAX, EXTRAS_SIZE_MAX, ExtrasRequest, RequestError
from backend.services import Services
from ui.generation_form import PRIVATE
from ui.image_upload import image_upload
from ui.job_runner import JobView, TabJobRunner
from ui.tab_choice import build_tab_choice, follow_tab

RESIZE_TABS = ("scale_by", "scale_to")  # index = the API's resize_mode


@dataclass
class UpscaleTab:
    source_tabs: gr.Tabs
    source: gr.Textbox
    single_image: gr.Image
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown


def upscaler_status(services: Services) -> str:
    """A line naming the model files that cannot be used, and why (the others stay usable)."""
    broken = [entry for entry in services.upscalers.entries if not entry.usable]
    if not broken:
        return ""
    items = "".join(f"<li>{html.escape(entry.path.name)}: {html.escape(entry.error or '')}</li>" for entry in broken)
    return f'<div class="upscaler-errors">Upscaler files that cannot be used:<ul>{items}</ul></div>'


def read_files(paths: list[str] | None) -> list[bytes]:
    return [Path(path).read_bytes() for path in paths or []]


@dataclass
class UpscaleControls:
    """The tab's inputs, and the request they make."""
    source: gr.Textbox  # which source tab is open: single | batch | folder
    single: gr.Image
    files: gr.File
    folder: gr.Textbox
    resize_mode: gr.Textbox  # scale_by | scale_to
    scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    crop: gr.Checkbox
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    visibility: gr.Slider
    gfpgan: gr.Slider | None = None

    @property
    def inputs(self) -> set:
        return {getattr(self, name) for name in self.__dataclass_fields__} - {None}

    def request(self, services: Services, values: dict) -> ExtrasRequest:
        kind, mode = values[self.source], values[self.resize_mode]
        if kind == "single":
            sources = {"images": read_files([values[self.single]] if values[self.single] else [])}
        elif kind == "batch":
            sources = {"images": read_files(values[self.files])}
        else:
            sources = {"input_dir": (values[self.folder] or "").strip() or None}
        if not sources.get("images") and not sources.get("input_dir"):
            raise RequestError("images", {"single": "drop an image to upscale",
                                          "batch": "add one or more images to upscale",
                                          "folder": "type a folder on the server"}[kind])
        if mode not in RESIZE_TABS:  # the choice comes from the browser, so it can be forged
            raise RequestError("resize_mode", f"one of {', '.join(RESIZE_TABS)}")
        return services.build_request(ExtrasRequest, {
            **sources, "resize_mode": RESIZE_TABS.index(mode), "upscaling_resize": values[self.scale],
            "upscaling_resize_w": int(values[self.width]), "upscaling_resize_h": int(values[self.height]),
            "upscaling_crop": values[self.crop], "upscaler_1": values[self.upscaler_1],
            "upscaler_2": values[self.upscaler_2] or "None",
            "extras_upscaler_2_visibility": values[self.visibility],
            "gfpgan_visibility": values[self.gfpgan] if self.gfpgan else 0})


def build_upscale_tab(services: Services) -> UpscaleTab:
    fields = ExtrasRequest.model_fields
    with gr.Row():
        with gr.Column():
            with gr.Tabs(elem_id="upscale_source_tabs") as source_tabs:
                with gr.Tab("Single image", id="single") as single_tab:
                    single = image_upload("Source", "upscale_image", sources=["upload", "clipboard"])
                with gr.Tab("Batch process", id="batch") as batch_tab:
                    files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                    type="filepath", elem_id="upscale_files")
                with gr.Tab("Batch from directory", id="folder") as folder_tab:
                    refused = services.settings.server_folders_refused
                    folder = gr.Textbox(label="Input directory (a folder on the server)", interactive=not refused,
                                        info=refused.capitalize() if refused else None, elem_id="upscale_input_dir")
            source = build_tab_choice("single", "upscale_source")
            with gr.Tabs(elem_id="upscale_resize_tabs"):
                with gr.Tab("Scale by", id="scale_by") as scale_by_tab:
                    scale = gr.Slider(label="Resize", minimum=1, maximum=EXTRAS_SCALE_MAX, step=0.05,
                                      value=fields["upscaling_resize"].default, elem_id="upscale_scale")
                with gr.Tab("Scale to", id="scale_to") as scale_to_tab:
                    with gr.Row():
                        width = gr.Slider(label="Width", minimum=64, maximum=EXTRAS_SIZE_MAX, step=8,
                                          value=fields["upscaling_resize_w"].default, elem_id="upscale_width")
                        height = gr.Slider(label="Height", minimum=64, maximum=EXTRAS_SIZE_MAX, step=8,
                                           value=fields["upscaling_resize_h"].default, elem_id="upscale_height")
                    crop = gr.Checkbox(label="Crop to fit", value=fields["upscaling_crop"].default,
                                       elem_id="upscale_crop")
            resize_mode = build_tab_choice("scale_by", "upscale_resize_mode")
            names = services.upscalers.names()
            with gr.Row():
                upscaler_1 = gr.Dropdown(label="Upscaler 1", choices=names, value="Lanczos", elem_id="upscaler_1")
                refresh = gr.Button("🔄", scale=0, min_width=50, elem_id="upscale_refresh")
            with gr.Row():
                upscaler_2 = gr.Dropdown(label="Upscaler 2", choices=["None", *[n for n in names if n != "None"]],
                                         value="None", elem_id="upscaler_2")
                visibility = gr.Slider(label="Upscaler 2 visibility", minimum=0, maximum=1, step=0.001, value=0,
                                       elem_id="upscaler_2_visibility")
            gfpgan = gr.Slider(label="GFPGAN visibility", minimum=0, maximum=1, step=0.001, value=0,
                               info=f"Restores faces; the model file goes in {services.faces.folder('GFPGAN')}",
                               elem_id="extras_gfpgan_visibility")
            status = gr.HTML(upscaler_status(services), elem_id="upscaler_status")
            run_button = gr.Button("Upscale", variant="primary", elem_id="upscale_generate")
        with gr.Column():
            progress = gr.HTML(elem_id="upscale_progress")
            gallery = gr.Gallery(label="Output", elem_id="upscale_gallery", columns=2, height=480, interactive=False,
                                 object_fit="contain")
            info = gr.Textbox(label="Postprocessing", lines=2, interactive=False, elem_id="upscale_info")
    results = gr.State([])

    # Which source and which resize mode the job uses follows the sub-tab the user last opened.
    for tab, choice, value in ((single_tab, source, "single"), (batch_tab, source, "batch"),
                               (folder_tab, source, "folder"), (scale_by_tab, resize_mode, "scale_by"),
                               (scale_to_tab, resize_mode, "scale_to")):
        follow_tab(tab, choice, value)

    def finished(job) -> dict:
        images = job.result.images
        return {gallery: [(image.path, Path(image.path).name) for image in images if image.path],
                info: images[0].postprocessing if images else "", results: [image.postprocessing for image in images]}

    runner = TabJobRunner(services, JobView(progress, finished=finished))
    controls = UpscaleControls(source, single, files, folder, resize_mode, scale, width, height, crop, upscaler_1,
                               upscaler_2, visibility, gfpgan)

    def run(values: dict, page: gr.Request):
        yield from runner.run(lambda: controls.request(services, values), page)

    def on_select(shown: list, event: gr.SelectData):
        return shown[event.index] if shown and event.index is not None and event.index < len(shown) else ""

    def refresh_list():
        services.upscalers.refresh()
        choices = services.upscalers.names()
        return (gr.Dropdown(choices=choices), gr.Dropdown(choices=["None", *[n for n in choices if n != "None"]]),
                upscaler_status(services))

    run_button.click(run, inputs=controls.inputs, outputs=[progress, gallery, info, results],
                     concurrency_limit=None, trigger_mode="multiple", **PRIVATE)  # see ui/tab_jobs.py
    gallery.select(on_select, inputs=results, outputs=info, **PRIVATE)
    refresh.click(refresh_list, outputs=[upscaler_1, upscaler_2, status], **PRIVATE)
    return UpscaleTab(source_tabs=source_tabs, source=source, single_image=single, upscaler_1=upscaler_1,
                      upscaler_2=upscaler_2)
