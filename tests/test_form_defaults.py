"""ui-config.json: only values the form's controls can show are applied; a broken file is ignored."""
from __future__ import annotations

import json

import gradio as gr

from backend.core.ui_defaults import UiDefaults
from ui.form_defaults import FormDefaults


def test_saved_values_are_checked_against_each_control(tmp_path):
    with gr.Blocks():
        controls = {"txt2img/Sampling steps/value": gr.Slider(1, 150, value=20, step=1, label="Sampling steps"),
                    "txt2img/Sampling method/value": gr.Dropdown(["Euler", "DDIM"], value="Euler"),
                    "txt2img/Prompt/value": gr.Textbox(label="Prompt"),
                    "txt2img/Resize mode/value": gr.Radio(["Just resize", "Crop"], type="index", value=0),
                    "txt2img/Enable/value": gr.Checkbox(value=False)}
    defaults = FormDefaults(controls, {key: control.value for key, control in controls.items()})
    checked = {key: defaults.checked(key, value) for key, value in (
        ("txt2img/Sampling steps/value", 151), ("txt2img/Sampling method/value", "Heun"),
        ("txt2img/Prompt/value", 5), ("txt2img/Resize mode/value", 2), ("txt2img/Enable/value", "yes"))}
    assert set(checked.values()) == {None}
    assert defaults.checked("txt2img/Sampling steps/value", 30) == 30
    assert defaults.checked("txt2img/Sampling method/value", "DDIM") == "DDIM"
    assert defaults.checked("txt2img/Resize mode/value", 1) == 1
    assert defaults.changes([20, "DDIM", "", 0, False]) == {"txt2img/Sampling method/value": "DDIM"}


def test_ui_config_file_round_trip_and_bad_files(tmp_path):
    store = UiDefaults(tmp_path / "ui-config.json")
    assert store.load() == {}
    store.save({"txt2img/Prompt/value": "a cat", "txt2img/Seed/value": 5, "bad": {"nested": 1}})
    assert store.load() == {"txt2img/Prompt/value": "a cat", "txt2img/Seed/value": 5}
    (tmp_path / "ui-config.json").write_text(json.dumps([1, 2]))
    assert store.load() == {}
    store.clear()
    assert not (tmp_path / "ui-config.json").exists()
