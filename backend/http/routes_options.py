"""/sdapi/v1 options, prompt-styles and memory: the server's settings and state."""
from __future__ import annotations

import logging
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Body, HTTPException

from backend.core.errors import UserError
from backend.core.options import USED_OPTIONS
from backend.http.a1111 import checkpoint_problem
from backend.http.bodies import PromptStyleItem
from backend.models.weight_files import CheckpointError
from backend.services import Services

log = logging.getLogger(__name__)


def add_options_routes(api: APIRouter, services: Services):
    @api.get("/options")
    def get_options():
        """Every option A1111's config.json has that means something here, with the model in use."""
        selected = services.models.selected
        return {**services.options.as_dict(), "sd_model_checkpoint": selected.title,
                "sd_checkpoint_hash": selected.sha256}

    @api.post("/options")
    def set_options(options: dict[str, Any] = Body(...)):
        """Sets any options (saved to config.json); a wrong type or range answers 422 naming the key and changes
        nothing. A1111 answers null; this answer says what changed, which of the keys this server keeps but does
        not act on, and which are fixed by a command-line flag for now."""
        options = {key: value for key, value in options.items() if key != "sd_checkpoint_hash"}  # read-only
        try:
            changed = services.set_options(options)
        except CheckpointError as error:
            raise HTTPException(status_code=422, detail=f"sd_model_checkpoint: {checkpoint_problem(error)}") from None
        except UserError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        unused = sorted(key for key in options if key not in USED_OPTIONS)
        if unused:
            log.info("POST /sdapi/v1/options: stored, not used by this server: %s", unused)
        return {"changed": changed, "unused": unused,
                "overridden": sorted(key for key in options if key in services.options.overrides)}

    @api.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles():
        """A1111's styles.csv (name, prompt, negative_prompt) beside the models folder; [] when there is none."""
        return [PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in services.styles.all()]

    @api.get("/memory")
    def memory():
        ram = psutil.virtual_memory()
        process = psutil.Process()
        result = {"ram": {"free": ram.available, "used": process.memory_info().rss, "total": ram.total}}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            result["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                              "active": {"peak": torch.cuda.max_memory_allocated()}}
        else:
            result["cuda"] = {"error": "CUDA is not available"}
        return result
