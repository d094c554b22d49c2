"""A1111's "Refiner" accordion (1.6+): a checkpoint that takes over the sampling at "Switch at" of the steps."""
from __future__ import annotations

import gradio as gr

from backend.services import Services

PRIVATE = {"api_visibility": "private"}
NO_REFINER = "None"


def refiner_choices(services: Services) -> list[str]:
    return [NO_REFINER, *(entry.title for entry in services.models.list_checkpoints())]


def build_refiner_controls(services: Services, prefix: str) -> dict[str, gr.Component]:
    """Refiner controls, keyed by the request field each one sets."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_refiner"):
        enable = gr.Checkbox(label="Enable refiner", value=False, elem_id=f"{prefix}_enable_refiner")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=refiner_choices(services), value=NO_REFINER,
                                     elem_id=f"{prefix}_refiner_checkpoint", scale=3)
            switch_at = gr.Slider(label="Switch at", minimum=0.01, maximum=1.0, step=0.01, value=0.8,
                                  elem_id=f"{prefix}_refiner_switch_at", scale=2)
    # new files appear in the list when it is opened
    checkpoint.focus(lambda: gr.Dropdown(choices=refiner_choices(services)), None, checkpoint, **PRIVATE)
    return {"enable_refiner": enable, "refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def refiner_fields(values: dict, controls: dict[str, gr.Component]) -> dict:
    if not controls or not values[controls["enable_refiner"]]:
        return {}
    checkpoint = values[controls["refiner_checkpoint"]]
    if checkpoint in (None, "", NO_REFINER):
        return {}
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": float(values[controls["refiner_switch_at"]])}


def refiner_updates(services: Services, fields: dict, controls: dict[str, gr.Component]) -> dict:
    """From pasted infotext: the refiner it names when this server has it (else off), and its switch point."""
    if not controls:
        return {}
    entry = services.models.registry.find(fields["refiner_checkpoint"]) if fields.get("refiner_checkpoint") else None
    updates = {controls["enable_refiner"]: entry is not None,
               controls["refiner_checkpoint"]: entry.title if entry else NO_REFINER}
    if entry is not None and "refiner_switch_at" in fields:
        updates[controls["refiner_switch_at"]] = fields["refiner_switch_at"]
    return updates
