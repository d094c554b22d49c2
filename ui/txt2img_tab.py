"""The txt2img tab: form -> Txt2ImgRequest -> job queue -> gallery, live preview, progress and infotext."""
from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from backend.requests import (BATCH_COUNT_RANGE, BATCH_SIZE_RANGE, CFG_RANGE, SIZE_RANGE, STEPS_RANGE, RequestError,
                              Txt2ImgRequest, build_request)
from backend.samplers import SAMPLERS, SCHEDULE_NAMES
from backend.services import Services
from ui.progress_view import render_done, render_error, render_progress

POLL_SECONDS = 0.25


@dataclass
class Txt2ImgForm:
    """The tab's input components, so other tabs can fill them ("Send to txt2img")."""
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number


def build_txt2img_tab(services: Services, checkpoint: gr.Dropdown) -> Txt2ImgForm:
    defaults = Txt2ImgRequest()
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt", placeholder="Prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", min_width=70)
                skip = gr.Button("Skip", elem_id="txt2img_skip", min_width=70)
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(label="Sampling method", choices=list(SAMPLERS), value=defaults.sampler_name,
                                      elem_id="txt2img_sampling")
                schedule = gr.Dropdown(label="Schedule type", choices=list(SCHEDULE_NAMES),
                                       value=defaults.scheduler, elem_id="txt2img_scheduler")
            steps = gr.Slider(label="Sampling steps", minimum=STEPS_RANGE[0], maximum=STEPS_RANGE[1], step=1,
                              value=defaults.steps, elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(label="Width", minimum=SIZE_RANGE[0], maximum=SIZE_RANGE[1], step=8,
                                  value=defaults.width, elem_id="txt2img_width")
                height = gr.Slider(label="Height", minimum=SIZE_RANGE[0], maximum=SIZE_RANGE[1], step=8,
                                   value=defaults.height, elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(label="Batch count", minimum=BATCH_COUNT_RANGE[0],
                                        maximum=BATCH_COUNT_RANGE[1], step=1, value=1, elem_id="txt2img_batch_count")
                batch_size = gr.Slider(label="Batch size", minimum=BATCH_SIZE_RANGE[0], maximum=BATCH_SIZE_RANGE[1],
                                       step=1, value=1, elem_id="txt2img_batch_size")
            cfg_scale = gr.Slider(label="CFG scale", minimum=CFG_RANGE[0], maximum=CFG_RANGE[1], step=0.5,
                                  value=defaults.cfg_scale, elem_id="txt2img_cfg_scale")
            with gr.Row():
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed", scale=4)
                random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", scale=0, min_width=50)
                reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", scale=0, min_width=50)
        with gr.Column():
            progress = gr.HTML(elem_id="txt2img_progress")
            gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=2, height=480,
                                 interactive=False)
            infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                                  elem_id="txt2img_infotext")

    job_id = gr.State(None)
    results = gr.State([])  # [(seed, infotext)] of the images shown, in gallery order
    selected_seed = gr.State(None)
    form = {prompt, negative_prompt, sampler, schedule, steps, width, height, batch_count, batch_size, cfg_scale,
            seed, checkpoint}

    def request_from_form(values: dict) -> Txt2ImgRequest:
        seed_value = values[seed]
        return build_request(Txt2ImgRequest, {
            "prompt": values[prompt], "negative_prompt": values[negative_prompt],
            "sampler_name": values[sampler], "scheduler": values[schedule], "steps": int(values[steps]),
            "cfg_scale": float(values[cfg_scale]), "width": int(values[width]), "height": int(values[height]),
            "seed": -1 if seed_value is None else int(seed_value), "batch_size": int(values[batch_size]),
            "n_iter": int(values[batch_count]), "checkpoint": values[checkpoint],
        })

    def run(values: dict):
        try:
            request = request_from_form(values)
        except RequestError as error:
            yield {progress: render_error(str(error))}
            return
        started = time.perf_counter()
        job = services.jobs.submit(request)
        yield {job_id: job.id, progress: render_progress(job, services.jobs.position(job))}
        shown_preview = 0
        while not job.finished.wait(POLL_SECONDS):
            update = {progress: render_progress(job, services.jobs.position(job))}
            if job.progress.preview is not None and job.progress.preview_step != shown_preview:
                shown_preview = job.progress.preview_step
                update[gallery] = [(job.progress.preview, f"Preview, step {shown_preview}")]
            yield update
        if job.status == "failed":
            yield {progress: render_error(job.error), job_id: None}
            return
        images = job.result.images
        yield {
            progress: render_done(job, time.perf_counter() - started), job_id: None,
            gallery: [(image.path, f"Seed {image.seed}") for image in images],
            results: [(image.seed, image.infotext) for image in images],
            infotext: images[0].infotext if images else "",
            selected_seed: images[0].seed if images else None,
        }

    def on_gallery_select(shown: list, event: gr.SelectData):
        if not shown or event.index is None or event.index >= len(shown):
            return gr.update(), None
        image_seed, text = shown[event.index]
        return text, image_seed

    # Our own job queue orders the work, so Gradio need not serialise these events.
    generate.click(run, inputs=form, outputs=[progress, gallery, infotext, job_id, results, selected_seed],
                   concurrency_limit=None, api_visibility="private")
    interrupt.click(lambda current: current and services.jobs.interrupt(current), inputs=job_id,
                    concurrency_limit=None, api_visibility="private")
    skip.click(lambda current: current and services.jobs.skip(current), inputs=job_id, concurrency_limit=None,
               api_visibility="private")
    gallery.select(on_gallery_select, inputs=results, outputs=[infotext, selected_seed],
                   api_visibility="private")
    random_seed.click(lambda: -1, outputs=seed, api_visibility="private")
    reuse_seed.click(lambda s: -1 if s is None else s, inputs=selected_seed, outputs=seed,
                     api_visibility="private")
    return Txt2ImgForm(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
                       steps=steps, width=width, height=height, cfg_scale=cfg_scale, seed=seed)
