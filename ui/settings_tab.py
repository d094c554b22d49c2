"""Settings tab: the speed and memory trade-offs this server runs with (set by flags at start), and what the
model cache holds now, with a button that frees the models no job is using."""
from __future__ import annotations

import html

import gradio as gr

from backend.services import Services
from ui.generation_form import PRIVATE

OFFLOAD_LABELS = {"none": "off (whole model on the device)", "model": "model CPU offload (--medvram)",
                  "sequential": "sequential CPU offload (--lowvram)"}


def render_settings(services: Services) -> str:
    settings, models = services.settings, services.models
    rows = [
        ("Device, precision", f"{models.device}, {str(models.dtype).removeprefix('torch.')}", "--device, --precision"),
        ("Attention and placement", models.runtime_status or "(no model placed yet)", "--xformers"),
        ("torch.compile", "on" if settings.compile_unet else "off", "--compile"),
        ("Offload", OFFLOAD_LABELS[settings.offload], "--medvram / --lowvram"),
        ("Tiled VAE", settings.vae_tiling, "--tiled-vae auto|always|never"),
        ("Model cache", f"{settings.max_models_in_memory} models, {settings.max_cache_gb:g} GB",
         "--max-models, --max-cache-gb"),
        ("Upscaler tiles", f"{settings.upscale_tile_size} px, overlap {settings.upscale_tile_overlap} px",
         "--upscale-tile-size, --upscale-tile-overlap"),
    ]
    table = "".join(f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td><td><code>{html.escape(flag)}"
                    f"</code></td></tr>" for name, value, flag in rows)
    cached = "".join(
        f"<tr><td>{html.escape(item['title'])}</td><td>{item['size_bytes'] / 1e9:.2f} GB</td>"
        f"<td>{'device' if item['on_device'] else 'RAM'}</td><td>{'yes' if item['in_use'] else 'no'}</td>"
        f"<td>{item['load_seconds']:.1f} s</td></tr>" for item in models.cache_report()) or \
        "<tr><td colspan=5>(empty)</td></tr>"
    return (f"<h3>Speed and memory</h3><table id='settings_speed'><tr><th>Setting</th><th>Now</th><th>Flag</th></tr>"
            f"{table}</table><h3>Model cache</h3><table id='settings_cache'><tr><th>Checkpoint</th><th>Size</th>"
            f"<th>Where</th><th>In use</th><th>Load time</th></tr>{cached}</table>")


def build_settings_tab(services: Services):
    view = gr.HTML(render_settings(services), elem_id="settings_view")
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="settings_refresh")
        free = gr.Button("Free unused models", elem_id="settings_free_memory")

    def free_unused() -> str:
        services.models.free_unused()
        return render_settings(services)

    refresh.click(lambda: render_settings(services), outputs=view, **PRIVATE)
    free.click(free_unused, outputs=view, **PRIVATE)
    return view
