"""A ControlNet unit of a generation request (sd-webui-controlnet's unit fields), and its infotext in the
extension's format: `ControlNet 0: "Module: canny, Model: name [hash], Weight: 1.0, ..."`, written and read back."""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.core.control_modes import (
    ControlMode,
    HiresOption,
    ResizeMode,
    parse_control_mode,
    parse_hires_option,
    parse_resize_mode,
)
from backend.core.image_input import clean_png

MAX_UNITS = 8


class ControlNetUnit(BaseModel):
    """One enabled unit. `image` None: the img2img input is the control image (the extension's default there).
    processor_res / threshold_a / threshold_b: -1 or out of the module's range mean its default (as there)."""
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    module: str = Field("none", max_length=200)
    model: str = Field(..., max_length=1000)
    weight: float = 1.0
    image: bytes | None = None
    mask: bytes | None = None
    resize_mode: ResizeMode = ResizeMode.CROP_AND_RESIZE
    processor_res: float = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: HiresOption = HiresOption.BOTH
    save_detected_map: bool = True
    slot: int | None = Field(None, ge=0, le=99, description="The unit's place among the client's units, disabled "
                                                             "ones included: the N of the infotext's 'ControlNet N'")

    @field_validator("image", "mask")
    @classmethod
    def _image(cls, value: bytes | None) -> bytes | None:
        return None if value is None else clean_png(value)

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, value):
        return parse_resize_mode(value)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, value):
        return parse_control_mode(value)

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr_option(cls, value):
        return parse_hires_option(value)

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 <= value <= 2):
            raise ValueError(f"must be between 0 and 2; got {value}")
        return value

    @field_validator("guidance_start", "guidance_end")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"must be between 0 and 1; got {value}")
        return value

    @field_validator("processor_res", "threshold_a", "threshold_b")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a number; got {value}")
        return value

    @model_validator(mode="after")
    def _order(self):
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start: must not be after guidance_end ({self.guidance_start} > "
                             f"{self.guidance_end})")
        return self


def unit_infotext(module: str, model_title: str, unit: ControlNetUnit, processor_res: int, threshold_a: float,
                  threshold_b: float) -> str:
    """The extension's serialisation (field names capitalised, values as Python prints them); it writes the
    resolved preprocessor parameters."""
    fields = {"Module": module, "Model": model_title, "Weight": float(unit.weight),
              "Resize Mode": unit.resize_mode.value, "Processor Res": int(processor_res),
              "Threshold A": float(threshold_a), "Threshold B": float(threshold_b),
              "Guidance Start": float(unit.guidance_start), "Guidance End": float(unit.guidance_end),
              "Pixel Perfect": unit.pixel_perfect, "Control Mode": unit.control_mode.value}
    return ", ".join(f"{key}: {value}" for key, value in fields.items())


def _parse_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_unit_infotext(text: str) -> dict:
    """`unit_infotext`'s text back to unit fields (module, model, weight, resize_mode, ...)."""
    values = {}
    for item in text.split(","):
        key, separator, value = item.strip().partition(": ")
        if separator:
            values["_".join(word.lower() for word in key.split(" "))] = _parse_value(value.strip())
    return values
