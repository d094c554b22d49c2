"""The model cache: switch-back without reloading, LRU limits, leases, failed loads keep the old model."""
from __future__ import annotations

import pytest

from backend.models.weight_files import CheckpointError
from tests.conftest import run_txt2img


@pytest.fixture
def counted_loads(services, monkeypatch):
    """Record every checkpoint the loader actually reads from disk."""
    loads = []
    original = services.models.loader.load

    def counting(source, *args, **kwargs):
        loads.append(str(source).rsplit("/", 1)[-1])
        return original(source, *args, **kwargs)

    monkeypatch.setattr(services.models.loader, "load", counting)
    return loads


def test_switching_back_to_a_cached_model_does_not_reload(services, counted_loads):
    services.models.select("tiny-sd1.safetensors")
    services.models.select("tiny-sd1-other.safetensors")
    before = list(counted_loads)
    entry = services.models.select("tiny-sd1.safetensors")
    assert counted_loads == before == ["tiny-sd1.safetensors", "tiny-sd1-other.safetensors"]
    assert services.models.selected == entry
    assert services.models.stats.hits >= 1


def test_lru_evicts_beyond_the_count_limit_and_reloads_on_demand(services, counted_loads, tmp_path, models_dir):
    from tools.tiny_models import write_tiny_checkpoint

    write_tiny_checkpoint(models_dir / "Stable-diffusion" / "third.safetensors", "sd1", seed=9)
    services.models.refresh()
    for name in ("tiny-sd1.safetensors", "tiny-sd1-other.safetensors", "third.safetensors"):
        services.models.select(name)
    cached = services.models.cached_titles()
    assert len(cached) == 2 and not any(t.startswith("tiny-sd1.safetensors") for t in cached)
    services.models.select("tiny-sd1.safetensors")
    assert counted_loads.count("tiny-sd1.safetensors") == 2


def test_a_leased_model_is_never_evicted(make_services):
    services = make_services(max_models_in_memory=1)
    with services.models.lease("tiny-sd1.safetensors") as (entry, model):
        other = services.models.select("tiny-sd1-other.safetensors")
        assert services.models.cached_titles() == [entry.title, other.title]  # over the limit while leased
    services.models.select("tiny-sd1-other.safetensors")
    assert services.models.cached_titles() == [other.title]  # the lease ended, so the limit holds again


def test_byte_limit_applies(make_services):
    services = make_services(max_cache_gb=1e-9)
    services.models.select("tiny-sd1.safetensors")
    other = services.models.select("tiny-sd1-other.safetensors")
    assert services.models.cached_titles() == [other.title]


def test_corrupt_checkpoint_leaves_previous_model_working(services, models_dir):
    good = services.models.select("tiny-sd1.safetensors")
    broken = models_dir / "Stable-diffusion" / "broken.safetensors"
    data = (models_dir / "Stable-diffusion" / "tiny-sd1.safetensors").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    services.models.refresh()
    with pytest.raises(CheckpointError):
        services.models.select("broken.safetensors")
    assert services.models.selected == good
    job = run_txt2img(services, seed=1)
    assert job.status == "done" and f"Model hash: {good.short_hash}" in job.result.images[0].infotext
    failed = run_txt2img(services, seed=1, checkpoint="broken.safetensors")
    assert failed.status == "failed" and "broken.safetensors" in failed.error


def test_hashes_are_cached_by_path_size_and_mtime(services, models_dir, monkeypatch):
    import hashlib

    entries = services.models.refresh()
    assert all(len(e.short_hash) == 10 for e in entries)
    expected = hashlib.sha256((models_dir / "Stable-diffusion" / "tiny-sd1.safetensors").read_bytes()).hexdigest()
    assert services.models.resolve("tiny-sd1.safetensors").sha256 == expected
    calls = []
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(a) or hashlib.new("sha256", *a))
    services.models.refresh()
    assert calls == []


def test_a_model_chosen_while_the_startup_model_loads_stays_chosen(services, monkeypatch):
    """The start-up load of the first listed checkpoint must not take the place of one the user picked meanwhile
    (a user's load that got in first, while the start-up choice waited for its turn)."""
    import threading

    real_load, real_lease = services.models.loader.load, services.models.lease
    user_loading, release, startup_leasing = threading.Event(), threading.Event(), threading.Event()

    def held_user_load(source, *args, **kwargs):
        if "tiny-sd1.safetensors" in str(source):
            user_loading.set()
            release.wait(60)
        return real_load(source, *args, **kwargs)

    def lease(query):
        if threading.current_thread().name == "startup":
            startup_leasing.set()  # past its "has the user chosen?" check
        return real_lease(query)

    monkeypatch.setattr(services.models.loader, "load", held_user_load)
    monkeypatch.setattr(services.models, "lease", lease)
    chosen = threading.Thread(target=services.select_checkpoint, args=("tiny-sd1.safetensors",))
    chosen.start()
    assert user_loading.wait(60)
    startup = threading.Thread(target=services.models.load_default, name="startup")
    startup.start()
    assert startup_leasing.wait(60)
    release.set()
    chosen.join(60)
    startup.join(60)
    assert services.models.selected.title.startswith("tiny-sd1.safetensors")
    assert services.options.current.sd_model_checkpoint.startswith("tiny-sd1.safetensors")
