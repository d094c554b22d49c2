"""History and queue bookkeeping in-process: search, positions, skip."""
from __future__ import annotations

import time

from backend.core.requests import Txt2ImgRequest
from tests.conftest import FAST, run_txt2img


def test_history_indexes_saved_images_and_searches_prompts(services):
    run_txt2img(services, prompt="a Red circle", seed=1)
    run_txt2img(services, prompt="a blue square", negative_prompt="red", seed=2)
    unsaved = run_txt2img(services, prompt="not saved red", seed=3, save_images=False)
    assert unsaved.result.images[0].path is None and unsaved.result.images[0].png.startswith(b"\x89PNG")
    found = services.history.images("red")
    assert [row["prompt"] for row in found] == ["a blue square", "a Red circle"]  # newest first, case-insensitive
    assert services.history.images("square")[0]["infotext"].startswith("a blue square\nNegative prompt: red")
    assert services.history.job(unsaved.id)["status"] == "done"


def test_queue_positions_and_skip(services):
    long_job = services.jobs.submit(Txt2ImgRequest(**{**FAST, "prompt": "long", "steps": 150, "n_iter": 3}))
    waiting = [services.jobs.submit(Txt2ImgRequest(**{**FAST, "seed": n})) for n in range(2)]
    deadline = time.monotonic() + 60
    while long_job.progress.step < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert services.jobs.position(long_job) == 0
    assert [services.jobs.position(job) for job in waiting] == [1, 2]
    assert [job.id for job in services.jobs.pending()] == [long_job.id] + [job.id for job in waiting]
    assert services.jobs.skip(long_job.id)
    while long_job.progress.batch < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert long_job.progress.batch >= 1  # the first batch was dropped and the second started
    services.jobs.interrupt(long_job.id)
    assert all(job.finished.wait(120) for job in [long_job, *waiting])
    assert long_job.status == "interrupted" and len(long_job.result.images) < 3
    assert [job.status for job in waiting] == ["done", "done"]
    assert services.jobs.position(waiting[0]) is None


def _on_step(services, hook):
    from backend.plugins.api import Registered

    services.extensions.hooks.on_step.append(Registered("history-probe", hook))


def test_each_image_is_indexed_as_soon_as_it_is_saved(services):
    indexed_during_third_batch = []

    def hook(info):
        if info.batch == 2 and info.step == 1:
            indexed_during_third_batch.append(len(services.history.images("indexed early")))

    _on_step(services, hook)
    job = run_txt2img(services, prompt="indexed early", n_iter=3, seed=1)
    assert job.status == "done"
    assert indexed_during_third_batch == [2]  # the first two batches' images, before the job ended


def test_images_saved_before_the_worker_died_stay_in_the_history_with_the_jobs_status(services):
    from ui.history_tab import image_caption, render_jobs

    def hook(info):
        if info.batch == 2:
            raise SystemExit("killed in the third batch")  # ends the worker thread: the job never completes

    _on_step(services, hook)
    job = run_txt2img(services, prompt="worker died", n_iter=4, seed=7)
    assert job.status == "failed" and job.result is None
    rows = services.history.images("worker died")
    assert sorted(row["seed"] for row in rows) == [7, 8]  # both images saved before it died, none lost
    assert all(row["job_status"] == "failed" for row in rows)
    assert image_caption(rows[0]) == "worker died (failed)"
    (listed,) = [row for row in services.history.jobs() if row["id"] == job.id]
    assert listed["status"] == "failed" and listed["images"] == 2
    table = render_jobs([listed])
    assert "worker died" in table and ">failed<" in table and "the worker stopped unexpectedly" in table
