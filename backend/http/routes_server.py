"""/sdapi/v1 cmd-flags, extensions, realesrgan-models, hypernetworks and interrogate: what the server runs with
and what it has, as A1111 lists them."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException

from backend.plugins.git_facts import git_facts
from backend.services import Services

SECRET_FLAGS = ("auth", "password", "token", "secret", "key")  # a flag whose name has one of these is redacted
REDACTED = "<redacted>"
HYPERNETWORK_SUFFIXES = (".pt", ".safetensors", ".ckpt")
INTERROGATORS = {  # A1111's interrogation models and the weights each one needs
    "clip": "the CLIP interrogator (BLIP captioning model plus a CLIP ViT-L/14 model)",
    "deepdanbooru": "the DeepDanbooru tagging model (model-resnet_custom_v3.pt)",
}


def redacted_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Every flag with its value; credentials (set ones) replaced, never returned."""
    def secret(name: str) -> bool:
        return any(word in name.lower() for word in SECRET_FLAGS) and not name.endswith(("_path", "_dir"))

    return {name: REDACTED if secret(name) and value not in (None, "") and not isinstance(value, bool) else value
            for name, value in flags.items()}


def add_server_routes(api: APIRouter, services: Services):
    @api.get("/cmd-flags")
    def cmd_flags():
        return redacted_flags(services.settings.command_flags)

    @api.get("/extensions")
    def extensions():
        listed = []
        for record in services.extensions.records:
            facts = git_facts(record.path)
            listed.append({"name": record.name, "remote": facts.remote, "branch": facts.branch,
                           "commit_hash": facts.commit_hash, "version": record.version or facts.commit_hash[:8],
                           "commit_date": facts.commit_date, "enabled": record.enabled})
        return listed

    @api.get("/realesrgan-models")
    def realesrgan_models():
        """The usable upscaler files of the RealESRGAN family (its folder, or a Real-ESRGAN architecture)."""
        def realesrgan(entry) -> bool:
            architecture = (entry.architecture or "").lower().replace("-", "")
            return entry.path.parent.name == "RealESRGAN" or "realesrgan" in architecture

        return [{"name": entry.name, "path": str(entry.path), "scale": entry.scale}
                for entry in services.upscalers.entries if entry.is_model and entry.usable and realesrgan(entry)]

    @api.get("/hypernetworks")
    def hypernetworks():
        """The files in models/hypernetworks (listed as A1111 does; this server cannot apply them: a
        <hypernet:...> tag in a prompt gives a warning)."""
        folder = services.settings.hypernetworks_dir
        if not folder.is_dir():
            return []
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in HYPERNETWORK_SUFFIXES
                       and path.is_file())
        return [{"name": path.stem, "path": str(path)} for path in files]

    @api.post("/interrogate")
    def interrogate(body: dict[str, Any] = Body(...)):
        model = str(body.get("model", "clip"))
        if model not in INTERROGATORS:
            raise HTTPException(status_code=404, detail=f"model: no interrogation model '{model}'; A1111's are "
                                                        f"{', '.join(INTERROGATORS)}")
        raise HTTPException(status_code=422, detail=f"model: interrogating with '{model}' needs "
                                                    f"{INTERROGATORS[model]}, which this server does not have; "
                                                    "interrogation is not available")
