"""The Ray worker pool for real: a local Ray runtime (2 CPUs, no dashboard) with 2 worker processes, two tiny
checkpoints. Jobs spread over both workers, each checkpoint stays on the worker that loaded it, progress and
previews reach the server by job id, interrupt and skip reach the worker, and a worker killed with SIGKILL mid-job
is replaced while its job completes on the other worker, recorded and saved once."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.requests import Txt2ImgRequest
from backend.core.settings import Settings
from backend.http.routes import build_api_router
from backend.services import build_services

START_TIMEOUT_S = 240  # two worker processes import torch and diffusers on a loaded 2-core machine
JOB_TIMEOUT_S = 180


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, checkpoint_files):
    from backend.cluster.ray_pool import PoolPlan, RayWorkerPool

    root = tmp_path_factory.mktemp("pool")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for name in ("sd1", "sd1_other"):
        os.link(checkpoint_files[name], checkpoints / checkpoint_files[name].name)
    settings = Settings(models_dir=root / "models", outputs_dir=root / "outputs", cache_dir=root / "cache",
                        device="cpu", preview_every=1)
    services = build_services(settings, pool=RayWorkerPool(settings, PoolPlan(workers=2, torch_threads=1)))
    try:
        wait_for(lambda: len(services.worker_states()) == 2 and all(
            worker.state == "idle" for worker in services.worker_states()), START_TIMEOUT_S, "two idle workers")
        yield services
    finally:
        services.close(30)


def titles(services) -> tuple[str, str]:
    names = [entry.title for entry in services.models.list_checkpoints()]
    return next(n for n in names if "other" not in n), next(n for n in names if "other" in n)


def request(services, checkpoint: str | None = None, **fields) -> Txt2ImgRequest:
    values = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "cfg_scale": 5.0, "seed": 1,
              "save_images": True, **fields}
    if checkpoint:
        values["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return services.build_request(Txt2ImgRequest, values)


def finished(jobs, timeout=JOB_TIMEOUT_S):
    for job in jobs:
        assert job.finished.wait(timeout), f"job {job.id} did not finish"
    return jobs


def by_id(services) -> dict:
    return {worker.id: worker for worker in services.worker_states()}


def test_each_checkpoint_stays_on_the_worker_that_loaded_it(pool):
    first, second = titles(pool)
    loads_before = sum(worker.model_loads for worker in pool.worker_states())
    jobs = finished([pool.jobs.submit(request(pool, checkpoint, seed=index))
                     for index, checkpoint in enumerate([first, second] * 3)])
    assert [job.status for job in jobs] == ["done"] * 6, [job.error for job in jobs]
    assert len({job.worker for job in jobs[0::2]}) == 1 and len({job.worker for job in jobs[1::2]}) == 1
    assert jobs[0].worker != jobs[1].worker
    workers = by_id(pool)
    assert workers[jobs[0].worker].models == [first] and workers[jobs[1].worker].models == [second]
    assert sum(worker.model_loads for worker in workers.values()) - loads_before == 2  # one load per checkpoint


def test_jobs_spread_over_both_workers_and_the_server_saves_each_image_once(pool):
    jobs = finished([pool.jobs.submit(request(pool, seed=10 + index)) for index in range(4)])
    assert [job.status for job in jobs] == ["done"] * 4, [job.error for job in jobs]
    assert len({job.worker for job in jobs}) == 2
    paths = [Path(job.result.images[0].path) for job in jobs]
    assert len(set(paths)) == 4 and all(path.is_file() for path in paths)
    with Image.open(paths[0]) as saved:
        assert "Seed: 10" in saved.info["parameters"]
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".")]  # no placeholder, no partial file
    recorded = {row["id"]: row for row in pool.history.jobs(100)}
    assert all(recorded[job.id]["status"] == "done" and recorded[job.id]["images"] == 1 for job in jobs)


def test_progress_and_previews_of_a_job_on_a_worker_reach_the_server_by_id(pool):
    app = FastAPI()
    app.include_router(build_api_router(pool))
    seen = []
    with TestClient(app) as http:
        job = pool.jobs.submit(request(pool, steps=40, seed=3))
        wait_for(lambda: job.done or job.progress.step >= 2, JOB_TIMEOUT_S, "steps")
        answer = http.get("/sdapi/v1/progress", params={"id_task": job.id}).json()
        seen.append(answer)
        workers = http.get("/sdapi/v1/workers").json()
        finished([job])
    assert job.status == "done", job.error
    assert answer["state"]["sampling_steps"] == 40 and answer["state"]["sampling_step"] >= 2
    assert 0 < answer["progress"] <= 1 and answer["current_image"]  # the worker's live preview, as a PNG
    running = next(worker for worker in workers if worker["id"] == job.worker)
    assert running["state"] == "busy" and running["job"] == job.id and running["pid"] > 0


def test_interrupt_and_skip_of_a_job_on_a_worker(pool):
    skipped = pool.jobs.submit(request(pool, steps=40, n_iter=2, seed=4))
    wait_for(lambda: skipped.done or skipped.progress.step >= 2, JOB_TIMEOUT_S, "steps")
    assert skipped.progress.batch == 0 and pool.jobs.skip(skipped.id)
    finished([skipped])
    assert skipped.status == "done" and [image.seed for image in skipped.result.images] == [5]  # batch 1 skipped

    interrupted = pool.jobs.submit(request(pool, steps=40, n_iter=2, seed=6))
    wait_for(lambda: interrupted.done or interrupted.progress.step >= 2, JOB_TIMEOUT_S, "steps")
    assert pool.jobs.interrupt(interrupted.id)
    finished([interrupted])
    assert interrupted.status == "interrupted"
    assert [image.seed for image in interrupted.result.images] == [6]  # the image being made is kept, no more


def test_a_worker_killed_mid_job_is_replaced_and_its_job_completes_once_on_the_other(pool):
    job = pool.jobs.submit(request(pool, steps=40, seed=7))
    wait_for(lambda: job.done or job.progress.step >= 2, JOB_TIMEOUT_S, "steps")
    victim, victim_pid = job.worker, by_id(pool)[job.worker].pid
    os.kill(victim_pid, signal.SIGKILL)
    finished([job])
    assert job.status == "done", job.error
    assert job.lost_on == victim and job.worker != victim
    recorded = [row for row in pool.history.jobs(100) if row["id"] == job.id]
    assert len(recorded) == 1 and recorded[0]["status"] == "done" and recorded[0]["images"] == 1
    saved = [path for path in Path(job.result.images[0].path).parent.iterdir() if "-7-" in path.name
             or path.name.endswith("-7.png")]
    assert len(saved) == 1  # the lost attempt saved nothing
    wait_for(lambda: by_id(pool)[victim].state == "idle", START_TIMEOUT_S, "the replacement worker")
    assert by_id(pool)[victim].pid != victim_pid
    after = finished([pool.jobs.submit(request(pool, seed=8)) for _ in range(2)])
    assert [job.status for job in after] == ["done", "done"]


def test_a_checkpoint_added_after_the_workers_started_is_found_by_them(pool, checkpoint_files):
    folder = pool.settings.checkpoints_dir
    os.link(checkpoint_files["sd1"], folder / "added-later.safetensors")
    pool.models.refresh()  # what the page's refresh button and POST /sdapi/v1/refresh-checkpoints do
    added = next(entry.title for entry in pool.models.list_checkpoints() if entry.name == "added-later.safetensors")
    job = finished([pool.jobs.submit(request(pool, added, seed=9))])[0]
    assert job.status == "done", job.error
    assert added in by_id(pool)[job.worker].models


def test_the_local_runtime_requires_rays_token_kept_private(pool):
    """Ray's processes listen on every interface; the local runtime therefore runs in Ray's token mode, and the
    token file is readable by this user only."""
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    assert token.is_file() and token.stat().st_mode & 0o077 == 0
