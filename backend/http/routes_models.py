"""/sdapi/v1 model and network listings (checkpoints, samplers, schedulers, upscalers, LoRAs, VAEs,
embeddings) and their refresh calls."""
from __future__ import annotations

from fastapi import APIRouter

from backend.core.requests import (
    LATENT_UPSCALE_MODES,
)
from backend.core.samplers import SCHEDULE_NAMES, sampler_table, schedule_api_name
from backend.http.a1111 import lora_metadata
from backend.http.bodies import (
    CheckpointItem,
    EmbeddingItem,
    EmbeddingsResponse,
    FaceRestorerItem,
    LatentUpscaleModeItem,
    LoraItem,
    SamplerItem,
    SchedulerItem,
    UpscalerItem,
    VaeItem,
)
from backend.services import Services

BUILTIN_UPSCALER_SCALE = 4  # what A1111 reports for None/Lanczos/Nearest (they have no scale of their own)


def add_model_routes(api: APIRouter, services: Services):
    @api.get("/sd-models", response_model=list[CheckpointItem])
    def sd_models():
        return [CheckpointItem(title=e.title, model_name=e.model_name, hash=e.short_hash, sha256=e.sha256,
                               filename=str(e.path)) for e in services.models.list_checkpoints()]

    @api.get("/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers():
        return [FaceRestorerItem(name=info.name, cmd_dir=str(info.folder)) for info in services.faces.available()]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        services.models.refresh()
        return {"count": len(services.models.list_checkpoints())}

    @api.get("/samplers", response_model=list[SamplerItem])
    def samplers():
        table = sampler_table(services.extensions.hooks.sampler_specs())
        return [SamplerItem(name=name, aliases=list(spec.aliases), options={"scheduler": spec.default_schedule})
                for name, spec in table.items()]

    @api.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers():
        return [SchedulerItem(name=schedule_api_name(label), label=label) for label in SCHEDULE_NAMES]

    @api.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers():
        """Usable upscalers only (a file that cannot be loaded is left out here; the UI shows why)."""
        return [UpscalerItem(name=entry.name, model_name=entry.path.stem if entry.path else None,
                             model_path=str(entry.path) if entry.path else None, model_url=None,
                             scale=entry.scale if entry.path else BUILTIN_UPSCALER_SCALE)
                for entry in services.upscalers.entries if entry.usable]

    @api.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem])
    def latent_upscale_modes():
        return [LatentUpscaleModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    @api.get("/loras", response_model=list[LoraItem])
    def loras():
        return [LoraItem(name=entry.name, alias=entry.name, path=str(entry.path),
                         metadata=lora_metadata(entry.path)) for entry in services.networks.loras.entries]

    @api.post("/refresh-loras")
    def refresh_loras():
        services.networks.loras.refresh()
        return {"count": len(services.networks.loras.entries)}

    @api.get("/sd-vae", response_model=list[VaeItem])
    def sd_vae():
        return [VaeItem(model_name=entry.file_name, filename=str(entry.path))
                for entry in services.networks.vaes.files.entries]

    @api.post("/refresh-vae")
    def refresh_vae():
        services.networks.vaes.refresh()
        return {"count": len(services.networks.vaes.files.entries)}

    @api.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings():
        """Every readable embedding file is "loaded" (which ones fit a model is decided per job, with a
        warning when one does not); a file that cannot be read is "skipped" with the reason."""
        loaded, failed = services.networks.embeddings.all()
        return EmbeddingsResponse(
            loaded={e.name: EmbeddingItem(step=e.step, shape=e.widths[0], vectors=e.length) for e in loaded},
            skipped={name: EmbeddingItem(error=reason) for name, reason in failed.items()})

    @api.post("/refresh-embeddings")
    def refresh_embeddings():
        services.networks.embeddings.refresh()
        return {"count": len(services.networks.embeddings.files.entries)}
