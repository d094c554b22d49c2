"""/sdapi/v1 options, prompt-styles and memory: the server's settings and state."""
from __future__ import annotations

import logging
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Body, HTTPException

from backend.http.a1111 import checkpoint_problem
from backend.http.bodies import PromptStyleItem
from backend.models.weight_files import CheckpointError
from backend.services import Services

log = logging.getLogger(__name__)


def add_options_routes(api: APIRouter, services: Services):
    @api.get("/options")
    def get_options():
        selected = services.models.selected
        settings = services.settings
        return {
            "sd_model_checkpoint": selected.title, "sd_checkpoint_hash": selected.sha256,
            "samples_format": "png", "samples_save": True,
            "outdir_txt2img_samples": str(services.outputs.root / "txt2img-images"),
            "outdir_img2img_samples": str(services.outputs.root / "img2img-images"),
            "outdir_extras_samples": str(services.outputs.root / "extras-images"),
            "sd_checkpoints_limit": settings.max_models_in_memory,
            "live_previews_enable": settings.preview_every > 0,
            "show_progress_every_n_steps": settings.preview_every, "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
        }

    @api.post("/options")
    def set_options(options: dict[str, Any] = Body(...)):
        """Only sd_model_checkpoint can be set (other settings travel in each request); the rest are reported."""
        if "sd_model_checkpoint" in options:
            try:
                services.models.select(str(options["sd_model_checkpoint"]))
            except CheckpointError as error:
                raise HTTPException(status_code=422,
                                    detail=f"sd_model_checkpoint: {checkpoint_problem(error)}") from None
        ignored = sorted(key for key in options if key != "sd_model_checkpoint")
        if ignored:
            log.info("POST /sdapi/v1/options: ignored read-only or unknown options %s", ignored)
        return {"ignored": ignored}

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
