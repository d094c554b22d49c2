"""sd-webui-controlnet's units in an A1111 body (`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`) ->
our request's `controlnet_units`. Its field names and aliases (input_image, mask_image, the image as
{"image", "mask"} or [image, mask]), its defaults (a unit without "enabled" is off, as there), its unknown keys
ignored as there. A unknown module or model is a 422 naming the unit's field."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import HTTPException

from backend.core.errors import UserError
from backend.core.image_input import ImageInputError, open_image
from backend.services import Services

SCRIPT_NAME = "controlnet"
# passed on as they are; the request checks their values
UNIT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
               "guidance_start", "guidance_end", "pixel_perfect", "control_mode", "hr_option", "save_detected_map")


def controlnet_script_args(alwayson_scripts: dict[str, Any]) -> tuple[list | None, dict[str, Any]]:
    """The ControlNet units (None: none sent) and the other always-on scripts."""
    others = {name: value for name, value in alwayson_scripts.items() if str(name).lower() != SCRIPT_NAME}
    sent = [value for name, value in alwayson_scripts.items() if str(name).lower() == SCRIPT_NAME]
    if not sent:
        return None, others
    value = sent[0]
    args = value.get("args") if isinstance(value, dict) else value
    if not isinstance(args, list):
        raise HTTPException(status_code=422, detail="alwayson_scripts.controlnet.args: must be a list of units")
    return args, others


def decode_unit_image(data: Any, field: str) -> bytes | None:
    """A base64 image (or data: URL) checked and decoded; None for none ("" is what webuiapi sends)."""
    if data is None or data == "":
        return None
    if not isinstance(data, str):
        raise HTTPException(status_code=422, detail=f"{field}: must be a base64 image")
    raw = data.split(",", 1)[-1] if data.startswith("data:") else data
    try:
        decoded = base64.b64decode(raw, validate=True)
        open_image(decoded)
    except (binascii.Error, ValueError) as error:
        detail = str(error) if isinstance(error, ImageInputError) else "not valid base64"
        raise HTTPException(status_code=422, detail=f"{field}: {detail}") from None
    return decoded


def _image_and_mask(unit: dict, field: str) -> tuple[bytes | None, bytes | None]:
    image = unit.get("image", unit.get("input_image"))
    mask = unit.get("mask", unit.get("mask_image"))
    if isinstance(image, dict):  # {"image": ..., "mask": ...}
        image, mask = image.get("image"), image.get("mask", mask)
    elif isinstance(image, list | tuple):  # [image, mask]
        if len(image) != 2 or isinstance(image[0], dict):
            raise HTTPException(status_code=422, detail=f"{field}.image: one image (or [image, mask]) per unit; "
                                                        "several input images per unit are not supported")
        image, mask = image
    return decode_unit_image(image, f"{field}.image"), decode_unit_image(mask, f"{field}.mask")


def translate_units(args: list, services: Services) -> list[dict[str, Any]]:
    """The enabled units as request fields, each with its place among the client's units (the infotext's N)."""
    units = []
    for slot, unit in enumerate(args):
        field = f"alwayson_scripts.controlnet.args[{slot}]"
        if not isinstance(unit, dict):
            raise HTTPException(status_code=422, detail=f"{field}: must be an object with the unit's fields")
        if not unit.get("enabled", False):
            continue
        image, mask = _image_and_mask(unit, field)
        fields = {name: unit[name] for name in UNIT_FIELDS if name in unit and unit[name] is not None}
        try:
            services.controlnets.preprocessors.get(fields.get("module", "none"), f"{field}.module")
            if str(fields.get("model", "None")) in ("", "None"):
                raise UserError(f"{field}.model", "choose a ControlNet model; installed: "
                                                  f"{', '.join(services.controlnets.model_titles()) or 'none'}")
            fields["model"] = services.controlnets.folder.find(str(fields["model"]), f"{field}.model").title
        except UserError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        units.append({**fields, "image": image, "mask": mask, "slot": slot})
    return units
