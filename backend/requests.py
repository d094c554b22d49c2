"""Typed, validated job requests and results. The UI and the REST API build the same objects."""
from __future__ import annotations

import math
from typing import Any

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from backend.samplers import SamplerError, resolve_sampler

MAX_SEED = 2**32 - 1
SIZE_RANGE = (64, 2048)
STEPS_RANGE = (1, 150)
CFG_RANGE = (1.0, 30.0)
BATCH_SIZE_RANGE = (1, 8)
BATCH_COUNT_RANGE = (1, 100)
INTEGER_RANGES = {"steps": STEPS_RANGE, "seed": (-1, MAX_SEED), "batch_size": BATCH_SIZE_RANGE,
                  "n_iter": BATCH_COUNT_RANGE}


class RequestError(ValueError):
    """Invalid user input. `field` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_range(value, low, high):
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}; got {value}")
    return value


class Txt2ImgRequest(BaseModel):
    """One txt2img job. Field names follow A1111's /sdapi/v1/txt2img."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_size: int = 1
    n_iter: int = Field(1, description="Batch count: how many batches run one after another")
    checkpoint: str | None = Field(None, description="Checkpoint title or name; None uses the selected one")
    save_images: bool = Field(True, description="Write the images to the outputs folder (and the history)")
    extension_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int) -> int:
        _check_range(value, *SIZE_RANGE)
        if value % 8:
            raise ValueError(f"must be a multiple of 8; got {value} (nearest: {value // 8 * 8} or {value // 8 * 8 + 8})")
        return value

    @field_validator("cfg_scale")
    @classmethod
    def _cfg(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number between {CFG_RANGE[0]} and {CFG_RANGE[1]}; got {value}")
        return _check_range(value, *CFG_RANGE)

    @field_validator("steps", "seed", "batch_size", "n_iter")
    @classmethod
    def _in_range(cls, value: int, info: ValidationInfo) -> int:
        return _check_range(value, *INTEGER_RANGES[info.field_name])

    @model_validator(mode="after")
    def _sampler(self):
        try:
            resolve_sampler(self.sampler_name, self.scheduler)
        except SamplerError as error:
            raise ValueError(str(error)) from None
        return self


def build_request(request_class: type[BaseModel], values: dict[str, Any]):
    """Build a request, turning pydantic's errors into one RequestError that names the field."""
    try:
        return request_class(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        message = first["msg"].removeprefix("Value error, ")
        if ": " in message and not first["loc"]:
            field, message = message.split(": ", 1)
        raise RequestError(field, message) from None


class ImageResult(BaseModel):
    """One generated image: plain data, so results can cross process boundaries."""
    model_config = ConfigDict(frozen=True)

    png: bytes  # encoded once, infotext included; the saved file holds the same bytes
    path: str | None  # None when the request asked not to save
    seed: int
    prompt: str
    negative_prompt: str
    infotext: str


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: list[ImageResult]
    interrupted: bool = False
