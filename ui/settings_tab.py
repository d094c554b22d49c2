"""Settings tab: A1111's options (config.json) in A1111's sections, with a search box and "Apply settings"
(what changed is listed); the form defaults (ui-config.json); and the speed and memory trade-offs this server
runs with (set by flags at start) with what the model cache holds now."""
from __future__ import annotations

import html
import typing
from dataclasses import dataclass

import gradio as gr

from backend.core.errors import UserError
from backend.core.options import OPTION_NAMES, SECTIONS, USED_OPTIONS, Options, option_label, option_section
from backend.services import Services
from ui.form_defaults import FormDefaults, build_defaults_section
from ui.generation_form import PRIVATE

OFFLOAD_LABELS = {"none": "off (whole model on the device)", "model": "model CPU offload (--medvram)",
                  "sequential": "sequential CPU offload (--lowvram)"}
FLAG_OF_OPTION = {"sd_checkpoints_limit": "--max-models"}


def render_settings(services: Services) -> str:
    settings, models = services.settings, services.models
    rows = [
        ("Device, precision", f"{models.device}, {str(models.dtype).removeprefix('torch.')}", "--device, --precision"),
        ("Attention and placement", models.runtime_status or "(no model placed yet)", "--xformers"),
        ("torch.compile", "on" if settings.compile_unet else "off", "--compile"),
        ("Offload", OFFLOAD_LABELS[settings.offload], "--medvram / --lowvram"),
        ("Tiled VAE", settings.vae_tiling, "--tiled-vae auto|always|never"),
        ("Model cache", f"{models.max_models} models, {settings.max_cache_gb:g} GB",
         "--max-models, --max-cache-gb"),
        ("Upscaler tiles", f"{settings.upscale_tile_size} px, overlap {settings.upscale_tile_overlap} px",
         "--upscale-tile-size, --upscale-tile-overlap"),
    ]
    table = "".join(f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td><td><code>{html.escape(flag)}"
                    f"</code></td></tr>" for name, value, flag in rows)
    cached = "".join(
        f"<tr><td>{html.escape(item['title'])}</td><td>{item['size_bytes'] / 1e9:.2f} GB</td>"
        f"<td>{'device' if item['on_device'] else 'RAM'}</td><td>{'yes' if item['in_use'] else 'no'}</td>"
        f"<td>{item['load_seconds']:.1f} s</td><td>{render_components(item['components'])}</td></tr>"
        for item in models.cache_report()) or "<tr><td colspan=6>(empty)</td></tr>"
    return (f"<h3>Speed and memory</h3><table id='settings_speed'><tr><th>Setting</th><th>Now</th><th>Flag</th></tr>"
            f"{table}</table><h3>Model cache</h3><table id='settings_cache'><tr><th>Checkpoint</th><th>Size</th>"
            f"<th>Where</th><th>In use</th><th>Load time</th><th>Components</th></tr>{cached}</table>")


def render_components(placement: dict[str, str]) -> str:
    """One line per model of the checkpoint: its name and where it sits (--medvram/--lowvram: moved as it runs)."""
    return "<br>".join(f"{html.escape(name)}: {html.escape(where)}" for name, where in placement.items())


def option_bounds(key: str) -> dict:
    return {name: getattr(item, name) for item in Options.model_fields[key].metadata for name in ("ge", "le")
            if getattr(item, name, None) is not None}


def option_info(services: Services, key: str) -> str:
    bounds = option_bounds(key)
    notes = [key + (f" ({bounds['ge']} to {bounds['le']})" if len(bounds) == 2 else "")]
    if key in services.options.overrides:
        notes.append(f"set by {FLAG_OF_OPTION.get(key, 'a command-line flag')} while the server runs")
    if key not in USED_OPTIONS:
        notes.append("kept for A1111 clients; no effect in this server yet")
    return " · ".join(notes)


def option_control(services: Services, key: str, value) -> gr.Component:
    """The control for one option, chosen by its type; elem_id "setting_<key>" as in A1111."""
    field = Options.model_fields[key]
    kind, arguments = field.annotation, typing.get_args(field.annotation)
    common = {"label": option_label(key), "info": option_info(services, key), "elem_id": f"setting_{key}",
              "elem_classes": "webui-setting"}
    if key == "sd_model_checkpoint":
        titles = [entry.title for entry in services.models.list_checkpoints()]
        return gr.Dropdown(choices=titles, value=value if value in titles else None, **common)
    if kind is bool:
        return gr.Checkbox(value=value, **common)
    if typing.get_origin(kind) is typing.Literal:
        return gr.Dropdown(choices=list(arguments), value=value, **common)
    if kind in (int, float):  # no minimum/maximum here: Apply answers a value out of range naming the option
        return gr.Number(value=value, precision=0 if kind is int else None, **common)
    if typing.get_origin(kind) is list:
        return gr.Textbox(value=", ".join(value), **common)
    return gr.Textbox(value=value or "", **common)


def form_value(key: str, value):
    """A control's value as the option's type (the Settings tab's Number gives floats, lists are comma text)."""
    kind = Options.model_fields[key].annotation
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typing.get_origin(kind) is list:
        return [item.strip() for item in (value or "").split(",") if item.strip()]
    if kind == (str | None) and value == "":
        return None
    return value


def shown_value(key: str, value):
    return ", ".join(value) if typing.get_origin(Options.model_fields[key].annotation) is list else value


def render_result(changed: list[str], error: str | None = None) -> str:
    if error:
        return f"<div id='settings_result' class='settings-error' style='color:#c0392b'>{html.escape(error)}</div>"
    if not changed:
        return "<div id='settings_result'>Nothing changed.</div>"
    names = ", ".join(html.escape(key) for key in changed)
    return f"<div id='settings_result'>{len(changed)} setting{'s' * (len(changed) != 1)} changed: {names}.</div>"


def matches(key: str, query: str) -> bool:
    query = query.strip().lower()
    return not query or query in key.lower() or query in option_label(key).lower() or \
        query in option_section(key).lower()


@dataclass
class SettingsTab:
    view: gr.HTML
    controls: dict[str, gr.Component]

    def refreshed(self, services: Services) -> list:
        """The speed view and every option control, as they are now (options may have changed over the API)."""
        stored = services.options.stored()
        return [render_settings(services), *(shown_value(key, stored[key]) for key in self.controls)]


def build_settings_tab(services: Services, defaults: FormDefaults, page: gr.Blocks) -> SettingsTab:
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1)
        search = gr.Textbox(placeholder="Search settings...", show_label=False, elem_id="settings_search",
                            scale=3, container=False)
    result = gr.HTML(elem_id="settings_result_view")
    stored = services.options.stored()
    controls: dict[str, gr.Component] = {}
    sections: dict[str, gr.Accordion] = {}
    for section in SECTIONS:
        with gr.Accordion(section, open=section == SECTIONS[0], elem_id=f"settings_section_{len(sections)}") as box:
            sections[section] = box
            for key in (key for key in OPTION_NAMES if option_section(key) == section):
                controls[key] = option_control(services, key, shown_value(key, stored[key]))
    with gr.Accordion("Defaults", open=False, elem_id="settings_defaults"):
        build_defaults_section(services, defaults, page)
    with gr.Accordion("Speed and memory (command-line flags)", open=False, elem_id="settings_speed_section"):
        view = gr.HTML(render_settings(services), elem_id="settings_view")
        with gr.Row():
            refresh = gr.Button("Refresh", elem_id="settings_refresh")
            free = gr.Button("Free unused models", elem_id="settings_free_memory")
    tab = SettingsTab(view, controls)

    def apply_settings(*values):
        now = services.options.stored()
        changes = {key: form_value(key, value) for key, value in zip(controls, values)}
        changes = {key: value for key, value in changes.items() if value != now[key]}
        try:
            changed = services.set_options(changes)
        except UserError as error:
            return [render_result([], str(error)), *(gr.update() for _ in controls)]
        return [render_result(changed), *tab.refreshed(services)[1:]]

    def filter_settings(query: str):
        shown = {key: matches(key, query or "") for key in controls}
        section_updates = [gr.Accordion(visible=any(shown[key] for key in controls if option_section(key) == section),
                                        open=bool((query or "").strip()) or section == SECTIONS[0])
                           for section in sections]
        return [*section_updates, *(gr.update(visible=shown[key]) for key in controls)]

    def free_unused() -> str:
        services.models.free_unused()
        return render_settings(services)

    apply.click(apply_settings, inputs=list(controls.values()), outputs=[result, *controls.values()], **PRIVATE)
    search.change(filter_settings, inputs=search, outputs=[*sections.values(), *controls.values()],
                  show_progress="hidden", **PRIVATE)
    refresh.click(lambda: render_settings(services), outputs=view, **PRIVATE)
    free.click(free_unused, outputs=view, **PRIVATE)
    return tab
