"""The Extensions tab: what is installed, whether it loaded (and why not), and switching extensions on or off
(remembered; takes effect at the next start, since loaded code cannot be unloaded)."""
from __future__ import annotations

import html

import gradio as gr

from backend.plugins.installer import DEFAULT_INDEX, ExtensionInstallError
from backend.services import Services
from ui.generation_form import PRIVATE


def render_extensions(services: Services) -> str:
    extensions = services.extensions
    if not extensions.records:
        folder = html.escape(str(extensions.folder)) if extensions.folder else "(none)"
        return f'<div class="extensions-empty">No extensions installed in {folder}.</div>'
    rows = []
    for record in extensions.records:
        state = "loaded" if record.loaded else "disabled" if not record.enabled else "failed"
        errors = ([record.error] if record.error else []) + extensions.hooks.hook_errors.get(record.name, [])
        load = f"{record.load_seconds:.2f}s" if record.load_seconds is not None else ""
        next_start = "on" if extensions.will_be_enabled(record.name) and not record.path.name.endswith(".disabled") \
            else "off"
        rows.append(f'<tr class="extension-{state}"><td>{html.escape(record.name)}</td>'
                    f'<td>{html.escape(record.version or "")}</td><td>{state}</td><td>{next_start}</td>'
                    f'<td>{load}</td><td class="extension-error">{"<br>".join(html.escape(e) for e in errors)}</td>'
                    f'</tr>')
    return ('<table class="extensions-table"><tr><th>Extension</th><th>Version</th><th>State</th>'
            '<th>Next start</th><th>Load time</th><th>Errors</th></tr>' + "".join(rows) + "</table>"
            f'<div>Extension API version {html.escape(extensions.api_version)}</div>')


def installed_names(services: Services) -> list[str]:
    folder = services.extensions.folder
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".disabled") for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")))


def render_index(entries) -> str:
    if not entries:
        return '<div class="extension-index-empty">The index lists no extensions.</div>'
    rows = "".join(f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.description)}</td>"
                   f"<td>{html.escape(', '.join(e.tags))}</td><td>{html.escape(e.url)}</td></tr>" for e in entries)
    return ('<table class="extension-index"><tr><th>Name</th><th>Description</th><th>Tags</th><th>URL</th></tr>'
            + rows + "</table>")


def build_extensions_tab(services: Services):
    extensions, installer = services.extensions, services.extension_installer
    if installer.refused_because:
        gr.HTML(f'<div class="extensions-refused" style="color:#b45309">{html.escape(installer.refused_because)}'
                "</div>", elem_id="extensions_refused")
    names = [record.name for record in extensions.records if not record.path.name.endswith(".disabled")]
    table = gr.HTML(render_extensions(services), elem_id="extensions_table")
    enabled = gr.CheckboxGroup(names, value=[n for n in names if extensions.will_be_enabled(n)],
                               label="Enabled (applies at the next start)", elem_id="extensions_enabled")
    apply = gr.Button("Apply", elem_id="extensions_apply")
    status = gr.HTML(elem_id="extensions_status")
    with gr.Accordion("Install from URL", open=False, elem_id="extensions_install"):
        with gr.Row():
            url = gr.Textbox(label="Git repository URL", elem_id="extensions_install_url", scale=4)
            branch = gr.Textbox(label="Branch (optional)", elem_id="extensions_install_branch", scale=1)
        install = gr.Button("Install", elem_id="extensions_install_button")
    with gr.Accordion("Available (extension index)", open=False, elem_id="extensions_index"):
        with gr.Row():
            index_source = gr.Textbox(label="Index URL or file", value=DEFAULT_INDEX, elem_id="extensions_index_url",
                                      scale=4)
            load_index = gr.Button("Load", elem_id="extensions_index_load", scale=0, min_width=80)
        index_view = gr.HTML(elem_id="extensions_index_view")
        with gr.Row():
            index_choice = gr.Dropdown(label="Extension from the index", choices=[], elem_id="extensions_index_choice",
                                       scale=4)
            install_chosen = gr.Button("Install", elem_id="extensions_index_install", scale=0, min_width=80)
        index_urls = gr.State({})
    with gr.Accordion("Update or remove", open=False, elem_id="extensions_manage"), gr.Row():
        chosen = gr.Dropdown(label="Installed extension", choices=installed_names(services),
                             elem_id="extensions_manage_choice", scale=4)
        update = gr.Button("Update (git pull)", elem_id="extensions_update", scale=0, min_width=140)
        uninstall = gr.Button("Uninstall", elem_id="extensions_uninstall", variant="stop", scale=0, min_width=100)
    log = gr.Textbox(label="Log", lines=8, interactive=False, elem_id="extensions_log")

    def on_apply(chosen_names: list[str]):
        try:
            installer.apply_enabled(extensions, list(chosen_names or []))
        except ExtensionInstallError as error:
            return gr.update(), f'<div class="job-error">{html.escape(str(error))}</div>'
        return render_extensions(services), '<div class="extensions-saved">Saved; restart the server to apply.</div>'

    def attempt(action):
        try:
            text = action()
        except ExtensionInstallError as error:
            text = f"Error: {error}"
        return text, gr.update(choices=installed_names(services))

    def on_load_index(source: str):
        try:
            entries = installer.load_index(source or "")
        except ExtensionInstallError as error:
            return f'<div class="job-error">{html.escape(str(error))}</div>', gr.update(choices=[]), {}
        installed = set(installed_names(services))
        available = [e for e in entries if e.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") not in installed]
        return (render_index(available), gr.update(choices=[e.name for e in available], value=None),
                {e.name: e.url for e in available})

    apply.click(on_apply, inputs=enabled, outputs=[table, status], **PRIVATE)
    install.click(lambda u, b: attempt(lambda: installer.install(u or "", b or "")), inputs=[url, branch],
                  outputs=[log, chosen], **PRIVATE)
    load_index.click(on_load_index, inputs=index_source, outputs=[index_view, index_choice, index_urls], **PRIVATE)
    install_chosen.click(lambda name, urls: attempt(lambda: installer.install(urls.get(name or "", ""))),
                         inputs=[index_choice, index_urls], outputs=[log, chosen], **PRIVATE)
    update.click(lambda name: attempt(lambda: installer.update(name or "")), inputs=chosen, outputs=[log, chosen],
                 **PRIVATE)
    uninstall.click(lambda name: attempt(lambda: installer.uninstall(name or "")), inputs=chosen,
                    outputs=[log, chosen], **PRIVATE)
