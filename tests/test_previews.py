"""Live previews in the colours of the model's own VAE, and A1111's TAESD decoder files."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.requests import Txt2ImgRequest
from backend.generation.latent_rgb import FitSamples, fit_error, fit_latent_rgb
from backend.generation.previews import PreviewRenderer, cheap_preview, choose_method

CPU = torch.device("cpu")


class Clamp(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(torch.nn.Module):
    """madebyollin's TAESD block: three 3x3 convolutions with ReLUs, a skip, and a ReLU after the sum."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = torch.nn.Sequential(*[layer for _ in range(2) for layer in (conv(width, width), torch.nn.ReLU())],
                                        conv(width, width))
        self.skip = torch.nn.Identity()
        self.fuse = torch.nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def conv(n_in: int, n_out: int, **options) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(n_in, n_out, 3, padding=1, **options)


def a1111_taesd_decoder(latent_channels: int = 4, seed: int = 0) -> torch.nn.Sequential:
    """The decoder as A1111 builds it (and saves it as taesd_decoder.pth): index 0 is the clamp."""
    torch.manual_seed(seed)
    layers = [Clamp(), conv(latent_channels, 64), torch.nn.ReLU()]
    for _ in range(3):
        layers += [Block(64), Block(64), Block(64), torch.nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]
    layers += [Block(64), conv(64, 3)]
    return torch.nn.Sequential(*layers).eval()


@pytest.fixture
def demo(make_services, tmp_path):
    return make_services(models_dir=tmp_path / "no-checkpoints", preview_every=1)


def final_and_last_preview(services, prompt: str, seed: int = 1):
    """The result, its last live preview, and the latents that preview was made from."""
    from backend.plugins.api import Registered

    latents = []
    services.extensions.hooks.on_step.append(Registered("latents-probe", lambda info: latents.append(info.latents)))
    job = services.jobs.run_and_wait(Txt2ImgRequest(prompt=prompt, seed=seed, width=64, height=64, steps=20),
                                     timeout=300)
    assert job.status == "done", job.error
    final = Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB")
    return final, job.progress.preview.convert("RGB"), latents[-1][0]


def mean_colour(image: Image.Image, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.asarray(image.resize(size, Image.BOX), dtype=float).reshape(-1, 3).mean(0)


def test_demo_model_previews_in_the_colours_of_its_result(demo):
    final, preview, latents = final_and_last_preview(demo, "a red circle on a green background")
    assert mean_colour(final)[1] > 120  # a green background, mostly
    assert np.abs(mean_colour(preview) - mean_colour(final)).max() < 8
    # SD1.5's published factors, which every preview used before, show this result's green as grey
    assert np.abs(mean_colour(cheap_preview(latents, "sd1")) - mean_colour(final)).max() > 30


def test_preview_colour_choice_is_kept_in_the_cache_and_not_worked_out_again(demo, monkeypatch):
    import backend.generation.previews

    final_and_last_preview(demo, "a blue square on a yellow background")
    cache = demo.settings.cache_dir / "previews.json"
    assert cache.is_file()
    monkeypatch.setattr(backend.generation.previews, "fitting_samples",
                        lambda vae: pytest.fail("sampled the VAE again"))
    renderer = PreviewRenderer(demo.settings.models_dir / "VAE-approx", CPU, torch.float32, cache)
    with demo.models.lease(None) as (entry, model):
        assert renderer.prepare(model.pipeline.vae, entry.path, model.family).method == "vae"


def test_linear_fit_recovers_a_linear_latent_space():
    generator = torch.Generator().manual_seed(3)
    weights = torch.randn(4, 3, generator=generator) * 0.3
    bias = torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(20, 4, 4, 4, generator=generator)
    colours = torch.einsum("nchw,cr->nrhw", latents, weights) + bias[None, :, None, None]
    fit = fit_latent_rgb(FitSamples(latents, colours))
    assert torch.allclose(torch.tensor(fit.weights, dtype=torch.float32), weights, atol=1e-5)
    assert torch.allclose(torch.tensor(fit.bias, dtype=torch.float32), bias, atol=1e-5)
    assert fit_error(FitSamples(latents, colours.clamp(-1, 1)), fit.colours) < 1e-5


def test_method_choice():
    assert choose_method(0.03, None, small_vae=True) == "linear"  # a linear latent space: the cheap map
    assert choose_method(0.30, None, small_vae=True) == "vae"  # the demo model's: its own small VAE
    assert choose_method(0.30, None, small_vae=False) == "linear"  # a big VAE is never decoded for previews
    assert choose_method(0.05, 0.04, small_vae=False) == "taesd"  # a TAESD made for this latent space
    assert choose_method(0.05, 0.40, small_vae=True) == "linear"  # a TAESD for another latent space


def test_a1111_taesd_decoder_file_loads_and_renders(tmp_path):
    reference = a1111_taesd_decoder(seed=5)
    approx = tmp_path / "models" / "VAE-approx"
    approx.mkdir(parents=True)
    torch.save(reference.state_dict(), approx / "taesd_decoder.pth")
    assert "1.weight" in reference.state_dict() and "3.conv.0.weight" in reference.state_dict()  # A1111's keys
    latent = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    image = PreviewRenderer(approx, CPU, torch.float32).render(latent, "sd1")
    assert image.size == (64, 64)  # TAESD decodes to pixels, not latent positions
    with torch.no_grad():
        expected = reference(latent[None])[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    assert np.abs(np.asarray(image, dtype=int) - expected.numpy().astype(int)).max() <= 1


def test_a_taesd_file_that_is_not_one_is_reported_and_previews_go_on(tmp_path, caplog):
    approx = tmp_path / "VAE-approx"
    approx.mkdir()
    torch.save({"weight": torch.zeros(3)}, approx / "taesdxl_decoder.pth")
    latent = torch.zeros(4, 8, 8)
    image = PreviewRenderer(approx, CPU, torch.float32).render(latent, "sdxl")
    assert image.size == (8, 8) and "taesdxl_decoder.pth" in caplog.text and "not a TAESD decoder" in caplog.text


def test_a_taesd_for_another_latent_space_does_not_colour_the_demo_models_previews(demo):
    approx = demo.settings.models_dir / "VAE-approx"
    approx.mkdir(parents=True)
    torch.save(a1111_taesd_decoder(seed=2).state_dict(), approx / "taesd_decoder.pth")  # random: no VAE's colours
    final, preview, _ = final_and_last_preview(demo, "a red circle on a green background")
    assert np.abs(mean_colour(preview) - mean_colour(final)).max() < 8


def test_previews_use_a_diffusers_taesd_folder_for_a_vae_not_prepared(models_dir):
    from diffusers import AutoencoderTiny

    latent = torch.randn(4, 8, 8)
    assert PreviewRenderer(models_dir / "VAE-approx", CPU, torch.float32).render(latent, "sd1").size == (8, 8)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(
        models_dir / "VAE-approx" / "taesd")
    assert PreviewRenderer(models_dir / "VAE-approx", CPU, torch.float32).render(latent, "sd1").size == (64, 64)

