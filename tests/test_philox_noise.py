"""A1111's "NV" noise source: Philox4x32-10 checked against Random123's published known-answer vectors, the normal
numbers against the values A1111 publishes for torch.randn(3, 4) on CUDA with seed 0, and NV noise in a job."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.core.infotext import parse_infotext, request_fields
from backend.generation.noise import BatchNoise, NoiseOptions
from backend.generation.philox import PhiloxGenerator, nv_randn, philox4x32
from tests.conftest import pixels, run_txt2img

# Random123's tests/kat_vectors, philox4x32 10 rounds: counter words, key words, output words (hex)
KNOWN_ANSWERS = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]
# torch.randn((3, 4), device="cuda") after seeding 0, as A1111's modules/rng_philox.py documents it
CUDA_RANDN_SEED_0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                     [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                     [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def words(text: str) -> np.ndarray:
    return np.array([int(word, 16) for word in text.split()], dtype=np.uint32)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox4x32_10_known_answers(counter, key, expected):
    # two columns, the vector in the second: each column is its own block
    output = philox4x32(np.stack([np.zeros(4, np.uint32), words(counter)], 1),
                        np.stack([np.zeros(2, np.uint32), words(key)], 1))
    assert output[:, 1].tolist() == words(expected).tolist()


def test_nv_randn_is_cudas_randn_for_the_seed():
    noise = nv_randn(0, (3, 4))
    assert noise.dtype == torch.float32 and noise.shape == (3, 4)
    assert np.allclose(noise.numpy(), CUDA_RANDN_SEED_0, atol=1e-6)
    generator = PhiloxGenerator(0)
    first, second = generator.randn((3, 4)), generator.randn((3, 4))
    assert torch.equal(first, noise) and not torch.allclose(second, first)  # each draw moves the offset on
    samples = nv_randn(123456789, (4, 64, 64))
    assert abs(samples.mean().item()) < 0.02 and abs(samples.std().item() - 1) < 0.02


def test_batch_noise_nv_is_philox_per_seed_with_variation_and_resize():
    options = NoiseOptions(randn_source="NV")
    noise, generators = BatchNoise([5, 6], [0, 0], options).initial((4, 8, 8), torch.device("cpu"), torch.float32)
    assert torch.equal(noise[0], nv_randn(5, (4, 8, 8))) and torch.equal(noise[1], nv_randn(6, (4, 8, 8)))
    assert all(generator.device.type == "cpu" for generator in generators)  # the sampler's later noise
    varied, _ = BatchNoise([5], [9], NoiseOptions(randn_source="NV", subseed_strength=1.0)).initial(
        (4, 8, 8), torch.device("cpu"), torch.float32)
    assert torch.allclose(varied[0], nv_randn(9, (4, 8, 8)), atol=1e-5)


def test_nv_job_differs_from_cpu_noise_and_round_trips(services):
    fields = {"sampler_name": "Euler", "prompt": "a red circle", "seed": 9}
    cpu = run_txt2img(services, **fields)
    nv = run_txt2img(services, **fields, randn_source="NV")
    assert nv.status == "done", nv.error
    assert np.abs(pixels(nv.result.images[0].path) - pixels(cpu.result.images[0].path)).mean() > 0.5
    parsed = parse_infotext(nv.result.images[0].infotext)
    assert parsed["RNG"] == "NV" and request_fields(parsed)["randn_source"] == "NV"
    again = run_txt2img(services, **fields, randn_source="NV")
    assert np.array_equal(pixels(again.result.images[0].path), pixels(nv.result.images[0].path))
