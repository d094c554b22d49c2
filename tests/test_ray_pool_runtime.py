"""Which Ray runtime the pool uses. `ray.init()` without an address joins any Ray instance it finds on the machine
(RAY_ADDRESS, /tmp/ray/ray_current_cluster, a running GCS process): `--workers N` would then run our workers in
someone else's cluster, or fail because num_cpus cannot be given to one. A stand-in `ray` module records the call,
so no runtime starts here."""
from __future__ import annotations

import sys
import types

from backend.cluster.ray_pool import PoolPlan, RayWorkerPool
from backend.core.settings import Settings


def recorded_init(monkeypatch) -> dict:
    calls: dict = {}
    fake_ray = types.ModuleType("ray")
    fake_ray.init = lambda **kwargs: calls.update(kwargs)
    fake_ray.cluster_resources = lambda: {"CPU": 2.0}
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    return calls


def test_workers_start_a_runtime_of_their_own_even_when_another_runs_on_the_machine(monkeypatch, tmp_path):
    calls = recorded_init(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")  # RAY_ADDRESS would win over address=None, not over "local"
    settings = Settings(models_dir=tmp_path, outputs_dir=tmp_path, cache_dir=tmp_path, device="cpu")
    count, gpus_each = RayWorkerPool(settings, PoolPlan(workers=2))._connect()
    assert calls["address"] == "local", "a new local runtime, never one found on the machine"
    assert calls["_node_ip_address"] == "127.0.0.1" and calls["include_dashboard"] is False
    assert (count, gpus_each) == (2, 0.0)


def test_ray_address_joins_the_named_cluster(monkeypatch, tmp_path):
    calls = recorded_init(monkeypatch)
    settings = Settings(models_dir=tmp_path, outputs_dir=tmp_path, cache_dir=tmp_path, device="cpu")
    count, _ = RayWorkerPool(settings, PoolPlan(workers=3, address="10.0.0.1:6379"))._connect()
    assert calls["address"] == "10.0.0.1:6379" and "num_cpus" not in calls
    assert count == 3  # a cluster without GPUs: --workers CPU workers
