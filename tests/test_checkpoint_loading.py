"""Single files in the original layout, diffusers folders and .ckpt pickles load through the real code path;
hostile and broken files are refused with clear messages."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from backend.models.loader import CheckpointLoader
from backend.models.weight_files import CheckpointError, sniff_format
from tools.tiny_models import tiny_components, to_original_state_dict, write_tiny_checkpoint


@pytest.fixture(scope="module")
def loader():
    return CheckpointLoader()


def assert_same_weights(module, loaded):
    expected, actual = module.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize("family,pipeline_class,label", [
    ("sd1", "StableDiffusionPipeline", "SD1.x"),
    ("sd2", "StableDiffusionPipeline", "SD2.x"),
    ("sdxl", "StableDiffusionXLPipeline", "SDXL"),
])
def test_single_file_family_detected_and_weights_exact(loader, checkpoint_files, family, pipeline_class, label):
    seed = {"sd1": 1, "sd2": 3, "sdxl": 4}[family]
    loaded = loader.load(checkpoint_files[family], torch.float32)
    assert loaded.label == label
    assert type(loaded.pipeline).__name__ == pipeline_class
    for name, module in tiny_components(family, seed=seed).items():
        assert_same_weights(module, getattr(loaded.pipeline, name))


def test_sd2_v_prediction_from_sidecar_yaml(loader, checkpoint_files, tmp_path):
    path = tmp_path / "v-model.safetensors"
    shutil.copy(checkpoint_files["sd2"], path)
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert loader.load(path, torch.float32).pipeline.scheduler.config.prediction_type == "v_prediction"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    assert loader.load(path, torch.float32).pipeline.scheduler.config.prediction_type == "epsilon"


def test_inpainting_checkpoint_detected(loader, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "inpaint.safetensors", "sd1", inpainting=True)
    loaded = loader.load(path, torch.float32)
    assert loaded.inpainting and loaded.label == "SD1.x inpainting"
    assert type(loaded.pipeline).__name__ == "StableDiffusionInpaintPipeline"


def test_diffusers_folder(loader, checkpoint_files, tmp_path):
    original = loader.load(checkpoint_files["sd1"], torch.float32).pipeline
    original.save_pretrained(tmp_path / "tiny-diffusers")
    loaded = loader.load(tmp_path / "tiny-diffusers", torch.float32)
    assert loaded.family == "sd1"
    assert_same_weights(original.unet, loaded.pipeline.unet)
    ids = loaded.pipeline.tokenizer("a red circle").input_ids
    assert ids == original.tokenizer("a red circle").input_ids


def test_ckpt_pickle_loads_and_format_is_sniffed_not_taken_from_name(loader, tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt", "sd1", seed=1)
    assert sniff_format(ckpt) == "torch-zip"
    assert_same_weights(tiny_components("sd1", seed=1)["unet"], loader.load(ckpt, torch.float32).pipeline.unet)
    renamed = tmp_path / "model.pt"  # any other name: the content decides
    shutil.copy(ckpt, renamed)
    assert_same_weights(tiny_components("sd1", seed=1)["unet"], loader.load(renamed, torch.float32).pipeline.unet)
    misnamed = tmp_path / "really-a-pickle.safetensors"  # but a .safetensors name must keep its promise
    shutil.copy(ckpt, misnamed)
    assert sniff_format(misnamed) == "torch-zip"
    with pytest.raises(CheckpointError, match="named .safetensors but is a PyTorch pickle.*rename it to .ckpt"):
        loader.load(misnamed, torch.float32)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol_zip", [True, False])
def test_pickle_with_code_is_refused_and_never_runs(loader, tmp_path, protocol_zip):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    state = {"state_dict": {"weight": torch.zeros(1)}, "evil": _Payload(str(marker))}
    if protocol_zip:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(CheckpointError, match="other than plain weights"):
        loader.load(path, torch.float32)
    assert not marker.exists()


def test_truncated_and_garbage_files_give_clear_errors(loader, checkpoint_files, tmp_path):
    data = checkpoint_files["sd1"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|not a valid safetensors"):
        loader.load(truncated, torch.float32)
    bogus_header = tmp_path / "bogus.safetensors"
    bogus_header.write_bytes((10**12).to_bytes(8, "little") + b"{" + b"x" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        loader.load(bogus_header, torch.float32)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"<html>not a model</html>")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a PyTorch"):
        loader.load(garbage, torch.float32)


def test_non_checkpoint_files_are_explained(loader, tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(CheckpointError, match="no Stable Diffusion UNet weights"):
        loader.load(lora, torch.float32)
    incomplete = tmp_path / "incomplete.safetensors"
    state = to_original_state_dict("sd1", tiny_components("sd1"))
    save_file({k: v.contiguous() for k, v in state.items() if "first_stage_model.decoder.up.0" not in k},
              str(incomplete))
    with pytest.raises(CheckpointError, match="VAE weights are incomplete"):
        loader.load(incomplete, torch.float32)


def test_declared_training_size_is_read_from_modelspec_metadata(loader, tmp_path):
    from backend.models.weight_files import declared_resolution

    path = write_tiny_checkpoint(tmp_path / "spec.safetensors", "sd1", metadata={"modelspec.resolution": "64x64"})
    assert declared_resolution(path) == (64, 64)
    pipeline = loader.load(path, torch.float32).pipeline
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 64  # the pipeline's default size
    plain = write_tiny_checkpoint(tmp_path / "plain.safetensors", "sd1")
    assert declared_resolution(plain) is None
