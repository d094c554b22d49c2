"""ControlNet model files in models/ControlNet: tiny ControlNets made from the tiny UNets, written in lllyasviel's
single-file layouts (.pth and .safetensors), as a diffusers file and as a diffusers folder; listed as
"name [hash]", rebuilt exactly, their family told from the weights, hostile pickles refused without running."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from backend.controlnet.loading import ControlNetCache, ControlNetFamilyMismatch, build_controlnet
from backend.controlnet.model_files import ControlNetFolder, read_controlnet
from backend.core.errors import UserError
from backend.models.weight_files import CheckpointError
from tools.tiny_controlnets import tiny_controlnet, write_tiny_controlnet
from tools.tiny_models import tiny_components

LAYOUTS = [("canny-v10.pth", "original"), ("canny-v11.safetensors", "original-v11"),
           ("canny-diffusers.safetensors", "diffusers"), ("canny-folder", "folder")]


@pytest.fixture(scope="module")
def unet_configs():
    return {family: dict(tiny_components(family)["unet"].config) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "ControlNet"
    for name, layout in LAYOUTS:
        write_tiny_controlnet(root / name, "sd1", seed=3, strength=0.05, layout=layout)
    write_tiny_controlnet(root / "xl" / "canny-xl.safetensors", "sdxl", seed=3, strength=0.05)
    return ControlNetFolder(root)


def old_a1111_hash(path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def test_models_are_listed_as_name_and_short_hash(folder):
    titles = folder.titles()
    assert len(titles) == 5
    folder_entry = folder.find("canny-folder")
    assert folder_entry.path.is_dir()
    v10 = folder.find("canny-v10")
    assert v10.title == f"canny-v10 [{old_a1111_hash(v10.path)}]" and v10.title in titles
    assert folder.find(v10.title) == v10 and folder.find("CANNY-V10 [00000000]") == v10  # name decides, as there
    with pytest.raises(UserError, match="unknown ControlNet model 'depth'.*canny-v10 \\["):
        folder.find("depth")


@pytest.mark.parametrize("name", [name.split(".")[0] for name, _ in LAYOUTS])
def test_each_layout_rebuilds_the_same_controlnet(folder, unet_configs, name):
    entry = folder.find(name)
    assert read_controlnet(entry).family == "sd1"
    built = build_controlnet(entry, unet_configs["sd1"], "sd1", "tiny-sd1", torch.float32)
    reference = tiny_controlnet("sd1", seed=3, strength=0.05)
    torch.manual_seed(0)
    sample, hint = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64)
    text = torch.randn(1, 7, 32)
    with torch.no_grad():
        expected = reference(sample, 10, text, hint, return_dict=False)
        got = built(sample, 10, text, hint, return_dict=False)
    assert expected[1].abs().max() > 0  # the control signal is not zero: the comparison means something
    for ours, theirs in zip([*got[0], got[1]], [*expected[0], expected[1]], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # same weights; kernels may pick other paths


def test_sdxl_controlnet_is_told_apart_and_rebuilt(folder, unet_configs):
    entry = folder.find("canny-xl")
    assert read_controlnet(entry).family == "sdxl"
    built = build_controlnet(entry, unet_configs["sdxl"], "sdxl", "tiny-sdxl", torch.float32)
    reference = tiny_controlnet("sdxl", seed=3, strength=0.05)
    assert all(torch.equal(built.state_dict()[key], value) for key, value in reference.state_dict().items())


def test_a_controlnet_for_another_family_names_both(folder, unet_configs):
    with pytest.raises(ControlNetFamilyMismatch) as refused:
        build_controlnet(folder.find("canny-xl"), unet_configs["sd1"], "sd1", "tiny-sd1.safetensors [abc]",
                         torch.float32, field="controlnet.args[0].model")
    message = refused.value.message
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].model"
    assert "canny-xl [" in message and "SDXL ControlNet" in message and "tiny-sd1.safetensors [abc]" in message
    assert "SD1.x" in message
    with pytest.raises(ControlNetFamilyMismatch, match="SD1.x ControlNet.*is SDXL"):
        build_controlnet(folder.find("canny-v10"), unet_configs["sdxl"], "sdxl", "tiny-sdxl", torch.float32)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pth_is_refused_without_running(tmp_path, unet_configs):
    root = tmp_path / "ControlNet"
    root.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"input_hint_block.0.weight": torch.zeros(1), "x": _Payload(marker)}, root / "evil.pth")
    folder = ControlNetFolder(root)
    assert folder.titles() == [f"evil [{old_a1111_hash(root / 'evil.pth')}]"]  # listing reads no weights
    with pytest.raises(CheckpointError, match="other than plain weights"):
        build_controlnet(folder.find("evil"), unet_configs["sd1"], "sd1", "tiny-sd1", torch.float32)
    assert not marker.exists()


def test_a_file_that_is_no_controlnet_says_so(tmp_path, unet_configs):
    root = tmp_path / "ControlNet"
    root.mkdir()
    from safetensors.torch import save_file
    save_file({"lora_unet_down.weight": torch.zeros(2)}, str(root / "some-lora.safetensors"))
    with pytest.raises(CheckpointError, match="not a ControlNet"):
        build_controlnet(ControlNetFolder(root).find("some-lora"), unet_configs["sd1"], "sd1", "x", torch.float32)


def test_the_cache_keeps_built_models_and_drops_the_oldest_unleased(folder, unet_configs):
    cache = ControlNetCache(folder, max_models=1)
    with cache.lease("canny-v10", unet_configs["sd1"], "sd1", "tiny", torch.float32) as (entry, first):
        with cache.lease("canny-v10 [ffffffff]", unet_configs["sd1"], "sd1", "tiny", torch.float32) as (_, again):
            assert again is first and entry.name == "canny-v10"
        with cache.lease("canny-v11", unet_configs["sd1"], "sd1", "tiny", torch.float32):
            assert cache.cached_count() == 2  # the leased one is kept past the limit
    assert cache.cached_count() == 1


def test_services_list_the_models_folder(make_services, models_dir):
    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_canny.pth", "sd1", seed=3)
    services = make_services()
    assert services.controlnets.folder.folder == models_dir / "ControlNet"
    assert [title.split(" [")[0] for title in services.controlnets.model_titles()] == ["control_sd15_canny"]
    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_scribble.safetensors", "sd1", seed=4)
    assert len(services.controlnets.model_titles(refresh=True)) == 2


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_built_controlnets_live_in_the_model_managers_cache(make_services, models_dir):
    """The model manager holds them beside the checkpoints: listed there, under its byte limit (unused ones go
    first), and dropped with the unused checkpoints when memory runs out."""
    import dataclasses

    from backend.core.requests import Txt2ImgRequest

    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_canny.safetensors", "sd1", seed=3)
    services = make_services()
    request = services.build_request(Txt2ImgRequest, {"prompt": "a cat", "steps": 1, "width": 64, "height": 64,
                                                      "save_images": False, "controlnet_units": [
        {"module": "none", "model": "control_sd15_canny", "image": png_bytes()}]})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    titles = services.models.modules.titles()
    assert len(titles) == 1 and titles[0].startswith("ControlNet control_sd15_canny [")
    assert services.controlnets.cache.store is services.models.modules
    services.models.free_unused()
    assert services.models.modules.titles() == [] and services.models.cached_titles() == []
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done" and len(services.models.modules.titles()) == 1
    services.models.settings = dataclasses.replace(services.models.settings,
                                                   max_cache_gb=services.models.cache_report()[0]["size_bytes"] / 1e9)
    services.models.modules.shrink()  # the checkpoint alone fills the limit now: the unused ControlNet goes
    assert services.models.modules.titles() == [] and len(services.models.cached_titles()) == 1
