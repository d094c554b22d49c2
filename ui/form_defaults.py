"""The txt2img/img2img form values saved as the defaults the page opens with (A1111's ui-config.json, keys
"<tab>/<label>/value"): collected from the forms, applied on every page load, restorable to the built-in ones."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.services import Services

VALUE_CONTROLS = (gr.Textbox, gr.Slider, gr.Number, gr.Dropdown, gr.Checkbox, gr.Radio)


@dataclass
class FormDefaults:
    controls: dict[str, gr.Component]  # "<tab>/<label>/value" -> control
    built_in: dict[str, object]  # the value each control was built with

    @classmethod
    def of_forms(cls, forms: dict[str, object]) -> FormDefaults:
        """`forms`: tab name -> GenerationForm."""
        controls: dict[str, gr.Component] = {}
        for tab, form in forms.items():
            candidates = [form.prompt, form.negative_prompt, form.sampler, form.schedule, form.steps, form.width,
                          form.height, form.batch_count, form.batch_size, form.cfg_scale, form.seed,
                          *form.extra_fields.values()]
            for control in candidates:
                if isinstance(control, VALUE_CONTROLS) and control.label and control.interactive is not False:
                    controls.setdefault(f"{tab}/{control.label}/value", control)
        return cls(controls, {key: control.value for key, control in controls.items()})

    @property
    def components(self) -> list[gr.Component]:
        return list(self.controls.values())

    def checked(self, key: str, value):
        """`value` if the control can show it (type, range, choices), else None."""
        control = self.controls[key]
        if isinstance(control, gr.Checkbox):
            return value if isinstance(value, bool) else None
        if isinstance(control, (gr.Slider, gr.Number)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            low, high = getattr(control, "minimum", None), getattr(control, "maximum", None)
            return value if (low is None or value >= low) and (high is None or value <= high) else None
        if isinstance(control, (gr.Dropdown, gr.Radio)):
            choices = [choice[1] if isinstance(choice, tuple) else choice for choice in control.choices or []]
            if getattr(control, "type", "value") == "index":
                return value if isinstance(value, int) and 0 <= value < len(choices) else None
            return value if value in choices else None
        return value if isinstance(value, str) else None

    def load_updates(self, services: Services) -> list:
        """One update per control: the saved default when there is a usable one, else left as it is."""
        saved = services.ui_defaults.load()
        updates = []
        for key in self.controls:
            value = self.checked(key, saved[key]) if key in saved else None
            updates.append(gr.update() if value is None else value)
        return updates

    def changes(self, values: list) -> dict[str, object]:
        """The current form values that differ from the built-in defaults."""
        def same(value, built_in) -> bool:  # an empty text box built with no value holds ""
            return value == built_in or (value in ("", None) and built_in in ("", None))

        return {key: value for (key, value) in zip(self.controls, values) if not same(value, self.built_in[key])}


def render_changes(changes: dict[str, object], saved: bool, restored: bool = False) -> str:
    import html

    if not changes:
        return ("<div id='defaults_result'>" + ("Restored: " if restored else "") +
                "the forms open with their built-in values.</div>")
    rows = "".join(f"<li><code>{html.escape(key)}</code>: {html.escape(repr(value))}</li>"
                   for key, value in changes.items())
    head = "Saved: the forms open with these values" if saved else "Would save"
    return f"<div id='defaults_result'>{head} ({len(changes)}):<ul>{rows}</ul></div>"


def build_defaults_section(services: Services, defaults: FormDefaults, page: gr.Blocks):
    """The Settings tab's "Defaults" part; and on every page load the forms take the saved defaults."""
    gr.Markdown("Save the current values of the txt2img and img2img forms as the values the page opens with "
                "(A1111's `ui-config.json`).")
    with gr.Row():
        save = gr.Button("Save current form values as defaults", elem_id="defaults_save")
        restore = gr.Button("Restore built-in defaults", elem_id="defaults_restore")
    result = gr.HTML(render_changes(services.ui_defaults.load(), True), elem_id="defaults_view")

    def save_values(*values):
        changes = defaults.changes(list(values))
        services.ui_defaults.save(changes)
        return render_changes(changes, True)

    def restore_values():
        services.ui_defaults.clear()
        return [render_changes({}, True, restored=True), *defaults.built_in.values()]

    save.click(save_values, inputs=defaults.components, outputs=result, api_visibility="private")
    restore.click(restore_values, outputs=[result, *defaults.components], api_visibility="private")
    page.load(lambda: [render_changes(services.ui_defaults.load(), True), *defaults.load_updates(services)],
              outputs=[result, *defaults.components], api_visibility="private")
