"""Speed and memory options (issue 10): tiled VAE for large images, torch.compile, offload flags, and the
Settings tab that shows them."""
from __future__ import annotations

import numpy as np
import pytest

import app
from backend.core.speed_settings import AUTO_TILING_PIXELS, SpeedOptions
from tests.conftest import pixels, run_txt2img
from ui.settings_tab import render_settings

LARGE = dict(width=128, height=128, steps=2)  # above the 64-pixel tiles small_tiles sets


def small_tiles(services, pixels: int = 64):
    """Tiles of `pixels` for the cached model's VAE: its config's 512 would need a 576-pixel job to tile at all."""
    with services.models.lease(None) as (_, model):
        vae = model.pipeline.vae
        vae.tile_sample_min_size = pixels
        vae.tile_latent_min_size = pixels // 2 ** (len(vae.config.block_out_channels) - 1)


def test_tiled_vae_decodes_in_tiles_for_that_job_only(make_services):
    whole = make_services(vae_tiling="never")
    reference = run_txt2img(whole, seed=5, **LARGE)
    tiled = make_services(vae_tiling="always")
    small_tiles(tiled)
    tiled_job = run_txt2img(tiled, seed=5, **LARGE)
    difference = np.abs(pixels(tiled_job.result.images[0].path) - pixels(reference.result.images[0].path))
    # tiles blend at their seams: close to the whole-image decode, but not the same pixels
    assert 0 < difference.mean() < 20
    assert "Tiled VAE: True" in tiled_job.result.images[0].infotext
    assert "Tiled VAE" not in reference.result.images[0].infotext
    with tiled.models.lease(None) as (_, model):
        assert not model.pipeline.vae.use_tiling  # the VAE is shared with the cached model: restored


def test_auto_tiles_only_large_images(make_services):
    auto = SpeedOptions(vae_tiling="auto")
    assert not auto.tiles_vae(1024, 1024) and auto.tiles_vae(2048, 2048)
    assert auto.tiles_vae(1536, 1537) and not auto.tiles_vae(1536, 1536) and AUTO_TILING_PIXELS == 1536 * 1536
    assert SpeedOptions(vae_tiling="always").tiles_vae(64, 64) and not SpeedOptions(vae_tiling="never").tiles_vae(
        4096, 4096)
    services = make_services()  # default auto: a small image is decoded whole
    assert "Tiled VAE" not in run_txt2img(services, seed=1).result.images[0].infotext
    with pytest.raises(ValueError, match="offload"):
        SpeedOptions(offload="sometimes")


def test_compile_gives_the_same_image_and_keeps_its_kernels(make_services, tmp_path, monkeypatch):
    # inductor's kernels built at -O0: this checks the wiring and the numbers, not the kernels' speed, and a cold
    # -O3 build of every kernel is the slowest part of the suite on a CI machine
    monkeypatch.setenv("TORCHINDUCTOR_DEBUG_COMPILE", "1")
    plain = run_txt2img(make_services(), seed=3, steps=2)
    compiled_services = make_services(compile_unet=True, cache_dir=tmp_path / "compile-cache")
    compiled = run_txt2img(compiled_services, seed=3, steps=2)
    assert compiled.status == "done", compiled.error
    assert np.abs(pixels(compiled.result.images[0].path) - pixels(plain.result.images[0].path)).max() <= 2
    assert "torch.compile UNet" in compiled_services.models.runtime_status
    assert any(path.is_file() for path in (tmp_path / "compile-cache" / "torch-compile").rglob("*"))


def test_offload_flags_map_to_settings_and_say_when_they_do_nothing(make_services):
    assert app.settings_from_args(app.parse_args(["--medvram"])).offload == "model"
    assert app.settings_from_args(app.parse_args(["--lowvram"])).offload == "sequential"
    assert app.settings_from_args(app.parse_args([])).offload == "none"
    with pytest.raises(SystemExit):
        app.parse_args(["--medvram", "--lowvram"])
    settings = app.settings_from_args(app.parse_args(["--compile", "--tiled-vae", "always"]))
    assert settings.compile_unet and settings.vae_tiling == "always"
    services = make_services(offload="model", compile_unet=True)
    job = run_txt2img(services, seed=2)
    status = services.models.runtime_status
    assert job.status == "done" and "--medvram needs a GPU; ignored" in status
    assert "compile: off (not combined with --medvram/--lowvram)" in status


def test_settings_tab_shows_the_options_and_the_cache(make_services):
    services = make_services(offload="sequential", vae_tiling="never", max_cache_gb=3.5)
    empty = render_settings(services)
    assert "sequential CPU offload (--lowvram)" in empty and "3.5 GB" in empty and "(empty)" in empty
    run_txt2img(services, seed=1)
    shown = render_settings(services)
    assert "tiny-sd1" in shown and "--lowvram needs a GPU" in shown
    services.models.free_unused()
    assert "(empty)" in render_settings(services)
