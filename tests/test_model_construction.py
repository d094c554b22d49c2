"""Building modules in several threads at once: a checkpoint load patches module construction process-wide
(accelerate's init_empty_weights), so every loader builds under the app's one ModelConstruction lock."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from backend.upscale.service import UpscalerModelCache
from tests.tiny_upscalers import write_upscaler_folder

BUILDERS = 4
BUILDS_PER_THREAD = 6


@pytest.fixture
def held_checkpoint_load(monkeypatch):
    """Make the next checkpoint load stop inside init_empty_weights (while the VAE is built) until released."""
    import diffusers

    inside, release = threading.Event(), threading.Event()
    build_vae = diffusers.AutoencoderKL.from_config.__func__

    def held(cls, *args, **kwargs):
        inside.set()
        assert release.wait(120), "the test never released the checkpoint load"
        return build_vae(cls, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_config", classmethod(held))
    return inside, release


def test_upscalers_built_while_a_checkpoint_loads_all_work(make_services, models_dir, held_checkpoint_load):
    files = write_upscaler_folder(models_dir)
    services = make_services()
    entries = [services.upscalers.registry.find(name) for name in ("tiny-esrgan-2x", "tiny-compact-x2")]
    inside, release = held_checkpoint_load
    loading = threading.Thread(target=services.models.select, args=(services.models.selected.title,))
    loading.start()
    assert inside.wait(120), "the checkpoint load did not start"

    failures: list[str] = []
    built: list[torch.nn.Module] = []

    def build_many():
        cache = UpscalerModelCache(1, torch.device("cpu"), torch.float32, services.construction)
        for number in range(BUILDS_PER_THREAD):  # two files, a cache of one: every get builds the network
            try:
                descriptor = cache.get(entries[number % 2])
                if any(parameter.is_meta for parameter in descriptor.model.parameters()):
                    failures.append(f"{entries[number % 2].name}: built with empty (meta) weights")
                built.append(descriptor)
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")

    builders = [threading.Thread(target=build_many) for _ in range(BUILDERS)]
    for builder in builders:
        builder.start()
    # Release the load only once every builder either finished (no lock: they built beside the patch) or waits
    # for the lock; either way they had their chance to build while the load was inside init_empty_weights.
    deadline = time.monotonic() + 120
    while not (all(not b.is_alive() for b in builders) or services.construction.waiting >= BUILDERS):
        assert time.monotonic() < deadline, "the builders neither finished nor waited"
        time.sleep(0.01)
    release.set()
    for thread in [loading, *builders]:
        thread.join(120)
    assert failures == []
    assert len(built) == BUILDERS * BUILDS_PER_THREAD
    assert services.models.cached_titles() == [services.models.selected.title]
    upscaled = services.upscalers.upscale(Image.new("RGB", (16, 16), (200, 40, 40)), "tiny-esrgan-2x", (32, 32))
    assert upscaled.size == (32, 32) and files  # the service's own cache builds and runs after the load too


def test_an_extension_building_models_holds_back_the_apps_loaders(make_services, models_dir):
    from backend.plugins.api import ExtensionAPI

    write_upscaler_folder(models_dir)
    services = make_services()
    api = ExtensionAPI("probe", services.extensions.hooks, construction=services.extensions.construction)
    loaded = threading.Event()

    def load_upscaler():
        services.upscalers.upscale(Image.new("RGB", (16, 16)), "tiny-compact-x2", (32, 32))
        loaded.set()

    with api.building_models():
        loader = threading.Thread(target=load_upscaler)
        loader.start()
        deadline = time.monotonic() + 60
        while services.construction.waiting < 1:  # the app's upscaler loader waits for the extension
            assert time.monotonic() < deadline and not loaded.is_set(), "the loader did not wait"
            time.sleep(0.01)
    loader.join(60)
    assert loaded.is_set()
