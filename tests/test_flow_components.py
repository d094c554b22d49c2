"""Separate VAE / text encoder files for a Flux checkpoint that lacks them (BFL's release), as Forge users keep them:
found in models/text_encoder and models/VAE, chosen per checkpoint (remembered across restarts), named in the
infotext, and a missing one named in the error."""
from __future__ import annotations

import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from backend.core.infotext import parse_infotext
from backend.core.requests import Txt2ImgRequest
from backend.models.weight_files import CheckpointError

REQUEST = dict(prompt="a cat", steps=3, width=64, height=64, seed=4, sampler_name="Euler")


@pytest.fixture
def bfl_models(tmp_path, flow_files):
    models = tmp_path / "bfl-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_bfl"], models / "Stable-diffusion" / "flux1-dev.safetensors")
    shutil.copytree(flow_files["text_encoder"], models / "text_encoder")
    (models / "VAE").mkdir()
    os.link(flow_files["VAE"] / "ae.safetensors", models / "VAE" / "ae.safetensors")
    other = {k: v * 1.5 if k.startswith("decoder.conv_out") else v
             for k, v in load_file(str(flow_files["VAE"] / "ae.safetensors")).items()}
    save_file(other, str(models / "VAE" / "ae-bright.safetensors"))
    return models


def generate(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**REQUEST, **fields}), timeout=300)
    return job


def test_default_parts_found_and_named_in_infotext(make_services, bfl_models):
    services = make_services(models_dir=bfl_models)
    job = generate(services)
    assert job.status == "done", job.error
    parameters = parse_infotext(job.result.images[0].infotext)
    assert {parameters[f"Module {n}"] for n in (1, 2, 3)} == {"ae", "clip_l", "t5xxl_fp16"}


def test_chosen_vae_is_used_and_remembered_across_restarts(make_services, bfl_models):
    services = make_services(models_dir=bfl_models)
    assert services.models.components.available() == ["clip_l.safetensors", "t5xxl_fp16.safetensors",
                                                      "ae-bright.safetensors", "ae.safetensors"]
    before = generate(services).result.images[0].png
    services.models.choose_components("flux1-dev", ["ae-bright.safetensors"])
    after = generate(services)
    assert after.result.images[0].png != before
    assert parse_infotext(after.result.images[0].infotext)["Module 1"] == "ae-bright"
    restarted = make_services(models_dir=bfl_models)
    assert restarted.models.components.chosen(restarted.models.resolve("flux1-dev").title) == ["ae-bright.safetensors"]
    assert generate(restarted).result.images[0].png == after.result.images[0].png


def test_missing_vae_is_named(make_services, bfl_models):
    (bfl_models / "VAE" / "ae.safetensors").unlink()
    services = make_services(models_dir=bfl_models)
    job = generate(services)
    assert job.status == "failed" and "no VAE" in job.error and "ae.safetensors" in job.error
    assert 400 <= job.error_status < 500


@pytest.mark.parametrize("names,message", [
    (["ae.safetensors", "ae-bright.safetensors"], "choose one"),
    (["nothing.safetensors"], "no VAE or text encoder named"),
    (["../ae.safetensors"], "not a file name"),
])
def test_bad_choices_are_the_users_error(make_services, bfl_models, names, message):
    services = make_services(models_dir=bfl_models)
    with pytest.raises(CheckpointError, match=message):
        services.models.choose_components("flux1-dev", names)


def test_choice_of_the_other_text_encoder_changes_the_image(make_services, bfl_models):
    encoders = bfl_models / "text_encoder"
    state = load_file(str(encoders / "clip_l.safetensors"))
    save_file({k: v.flip(0) if k.endswith("token_embedding.weight") else v for k, v in state.items()},
              str(encoders / "clip_l_finetune.safetensors"))
    services = make_services(models_dir=bfl_models)
    plain = generate(services).result.images[0].png
    services.models.choose_components("flux1-dev", ["clip_l_finetune.safetensors"])
    tuned = generate(services)
    assert tuned.status == "done", tuned.error
    assert tuned.result.images[0].png != plain
    assert "clip_l_finetune" in parse_infotext(tuned.result.images[0].infotext).values()
