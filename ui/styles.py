"""A1111's Styles under the Generate button: the multi-select whose styles each job applies, 📋 (apply the selected
styles to the prompt boxes and clear the selection) and ✏️ (the style editor: create, edit, delete, or save the
current prompt as a style). The styles live in styles.csv (backend.prompts.styles)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.core.requests import RequestError
from backend.prompts.styles import PromptStyle, StyleStore, apply_styles, extract_styles
from ui.generation_form import PRIVATE


@dataclass
class StylePicker:
    dropdown: gr.Dropdown
    apply: gr.Button
    edit: gr.Button


def style_names(store: StyleStore) -> list[str]:
    try:
        return store.names()
    except (RequestError, OSError):  # an unreadable file: no styles to offer (a job naming one says why)
        return []


def build_style_picker(store: StyleStore, prefix: str) -> StylePicker:
    with gr.Row(elem_id=f"{prefix}_styles_row"):
        dropdown = gr.Dropdown(label="Styles", choices=style_names(store), value=[], multiselect=True,
                               elem_id=f"{prefix}_styles", scale=4, min_width=120)
        with gr.Column(scale=0, min_width=50):
            apply = gr.Button("📋", elem_id=f"{prefix}_style_apply", min_width=40,
                              elem_classes="tool-button")
            edit = gr.Button("✏️", elem_id=f"{prefix}_style_edit", min_width=40, elem_classes="tool-button")
    # styles.csv may change (the other tab's editor, another program): offer its current names when opened
    dropdown.focus(lambda: gr.Dropdown(choices=style_names(store)), None, dropdown, **PRIVATE)
    return StylePicker(dropdown, apply, edit)


def build_style_editor(store: StyleStore, prefix: str, picker: StylePicker, prompt: gr.Textbox,
                       negative_prompt: gr.Textbox):
    """The editor (hidden until ✏️), below the prompt row, and the picker's buttons."""
    with gr.Group(visible=False, elem_id=f"{prefix}_style_editor") as editor:
        gr.Markdown("**Style editor** - a style's prompt with `{prompt}` puts your prompt there; without it the "
                    "style is appended after a comma.")
        name = gr.Dropdown(label="Style (choose one, or type a new name)", choices=style_names(store), value=None,
                           allow_custom_value=True, elem_id=f"{prefix}_edit_style_name")
        style_prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{prefix}_edit_style_prompt")
        style_negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_edit_style_neg_prompt")
        with gr.Row():
            copy = gr.Button("Copy current prompt", elem_id=f"{prefix}_edit_style_copy")
            save = gr.Button("Save", variant="primary", elem_id=f"{prefix}_edit_style_save")
            delete = gr.Button("Delete", variant="stop", elem_id=f"{prefix}_edit_style_delete")
            close = gr.Button("Close", elem_id=f"{prefix}_edit_style_close")
        status = gr.Markdown(elem_id=f"{prefix}_edit_style_status")

    def open_editor(selected: list[str] | None):
        first = (selected or [None])[0]
        return {editor: gr.Group(visible=True), name: gr.Dropdown(choices=style_names(store), value=first),
                **show_style(first)}

    def show_style(chosen: str | None) -> dict:
        style = next((s for s in _styles(store) if s.name == chosen), None)
        if style is None:  # a new name: keep what is typed
            return {status: ""}
        return {style_prompt: style.prompt, style_negative: style.negative_prompt, status: ""}

    def save_style(chosen: str | None, text: str, negative: str):
        try:
            store.save(PromptStyle((chosen or "").strip(), text or "", negative or ""))
        except RequestError as error:
            return {status: f"⚠️ {error}"}
        names = style_names(store)
        return {name: gr.Dropdown(choices=names, value=chosen.strip()), picker.dropdown: gr.Dropdown(choices=names),
                status: f"Saved style **{chosen.strip()}** to {store.path.name}."}

    def delete_style(chosen: str | None, selected: list[str] | None):
        if not chosen or not store.delete(chosen):
            return {status: f"⚠️ No style named {chosen!r} to delete." if chosen else "⚠️ Choose a style."}
        names = style_names(store)
        return {name: gr.Dropdown(choices=names, value=None), style_prompt: "", style_negative: "",
                picker.dropdown: gr.Dropdown(choices=names, value=[s for s in selected or [] if s in names]),
                status: f"Deleted style **{chosen}**."}

    def materialize(text: str, negative: str, selected: list[str] | None):
        """A1111's 📋: the selected styles are written into the prompts, and the selection is cleared."""
        try:
            styles = store.resolve(list(selected or []))
        except RequestError as error:
            gr.Warning(str(error))
            return gr.update(), gr.update(), gr.update()
        text, negative = apply_styles(text or "", negative or "", styles)
        return text, negative, []

    editor_outputs = [editor, name, style_prompt, style_negative, status]
    picker.edit.click(open_editor, inputs=picker.dropdown, outputs=editor_outputs, **PRIVATE)
    picker.apply.click(materialize, inputs=[prompt, negative_prompt, picker.dropdown],
                       outputs=[prompt, negative_prompt, picker.dropdown], **PRIVATE)
    name.input(show_style, inputs=name, outputs=[style_prompt, style_negative, status], **PRIVATE)
    copy.click(lambda text, negative: (text, negative), inputs=[prompt, negative_prompt],
               outputs=[style_prompt, style_negative], **PRIVATE)
    save.click(save_style, inputs=[name, style_prompt, style_negative],
               outputs=[name, picker.dropdown, status], **PRIVATE)
    delete.click(delete_style, inputs=[name, picker.dropdown],
                 outputs=[name, style_prompt, style_negative, picker.dropdown, status], **PRIVATE)
    close.click(lambda: gr.Group(visible=False), outputs=editor, **PRIVATE)


def _styles(store: StyleStore) -> list[PromptStyle]:
    try:
        return store.all()
    except (RequestError, OSError):
        return []


def styles_from_prompts(store: StyleStore, prompt: str, negative_prompt: str) -> tuple[list[str], str, str] | None:
    """Pasted infotext: the styles its prompts end with and the prompts without them (A1111's default "Apply if
    any"), or None when no style matches."""
    found, prompt, negative_prompt = extract_styles(prompt, negative_prompt, _styles(store))
    return (found, prompt, negative_prompt) if found else None
