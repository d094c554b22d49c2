"""--medvram / --lowvram with Flux/SD3: the offload hooks diffusers needs go on all their models (transformer, both or
three text encoders, VAE), the job pipelines built from the cached one follow them to the GPU, and the Settings tab
says where each model sits. Hooks are installed for a CUDA device without a GPU (they move weights only when a model
runs), so this runs on CPU-only machines; --lowvram's per-layer offload needs a driver and is checked by what is
called."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from backend.core.speed_settings import SpeedOptions
from backend.models.speed_options import compile_unet, component_placement, place

CUDA = torch.device("cuda")
FLUX_MODELS = {"transformer", "text_encoder", "text_encoder_2", "vae"}


@pytest.fixture
def flux_pipeline():
    from tools.tiny_flow_models import tiny_flow_pipeline

    return tiny_flow_pipeline("flux", seed=1)


def test_medvram_offloads_every_flux_model_and_job_pipelines_follow(flux_pipeline):
    from backend.generation.pipelines import job_pipeline
    from backend.models.loader import LoadedModel

    assert place(flux_pipeline, CUDA, SpeedOptions(offload="model")) == "placement: model CPU offload to cuda " \
                                                                         "(--medvram)"
    placement = component_placement(flux_pipeline)
    assert set(placement) == FLUX_MODELS
    assert all(where == "RAM, moved to cuda:0 while it runs (--medvram)" for where in placement.values())
    model = LoadedModel(pipeline=flux_pipeline, family="flux", inpainting=False)
    for task in ("txt2img", "img2img", "inpaint"):
        job = job_pipeline(model, task, flux_pipeline.scheduler, "flux-tiny")
        assert job._execution_device == torch.device("cuda:0")  # noise and latents are made on the GPU


def test_lowvram_chooses_sequential_offload_and_says_so(flux_pipeline, monkeypatch):
    calls = []
    monkeypatch.setattr(flux_pipeline, "enable_sequential_cpu_offload", lambda device: calls.append(device))
    status = place(flux_pipeline, CUDA, SpeedOptions(offload="sequential"))
    assert status == "placement: sequential CPU offload to cuda (--lowvram)"
    assert calls == [CUDA]
    # what enable_sequential_cpu_offload leaves: an offloading hook on each layer
    layer = flux_pipeline.transformer.transformer_blocks[0].attn.to_q
    layer._hf_hook = SimpleNamespace(offload=True, execution_device=torch.device("cuda:0"))
    placement = component_placement(flux_pipeline)
    assert placement["transformer"] == "RAM, each layer moved to cuda:0 as it runs (--lowvram)"
    assert placement["vae"] == "cpu"


def test_offload_flags_are_no_ops_on_the_cpu(flux_pipeline):
    assert "needs a GPU; ignored" in place(flux_pipeline, torch.device("cpu"), SpeedOptions(offload="model"))
    assert set(component_placement(flux_pipeline).values()) == {"cpu"}


def test_compile_takes_the_transformer_of_flow_models(flux_pipeline, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode: compiled.append(module) or module)
    assert compile_unet(flux_pipeline, torch.device("cpu"), SpeedOptions(compile=True)) == \
        "compile: torch.compile transformer"
    assert compiled == [flux_pipeline.transformer]


def test_settings_tab_says_where_each_flux_model_sits(make_services, tmp_path, flow_files):
    from ui.settings_tab import render_settings

    models = tmp_path / "offload-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    services = make_services(models_dir=models)
    services.select_checkpoint("flux-tiny")
    shown = render_settings(services)
    for name in FLUX_MODELS:
        assert f"{name}: cpu" in shown
