"""Progress that tells the truth: the user's step count (second-order samplers, hires fix as one bar), a
time-left estimate from measured steps, and an interrupt that keeps the image it was making (as A1111 does)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.core.requests import Txt2ImgRequest
from backend.jobs.queue import JobProgress
from backend.plugins.api import Registered
from tests.conftest import FAST, run_txt2img


def watch_steps(services, on_step=None) -> list[tuple[int, int, int, float]]:
    """(batch, step, steps per batch, fraction) of the running job after every model call; `on_step(job, seen)`
    runs there too (to interrupt at a chosen point)."""
    seen: list[tuple[int, int, int, float]] = []

    def hook(info):
        job = services.jobs.running()
        progress = job.progress
        seen.append((progress.batch, progress.step, progress.steps_per_batch, progress.fraction))
        if on_step is not None:
            on_step(job, seen)

    services.extensions.hooks.on_step.append(Registered("progress-probe", hook))
    return seen


def test_time_left_is_estimated_from_measured_steps_not_from_start_up():
    now = [100.0]
    progress = JobProgress(steps_per_batch=10, batches=1, clock=lambda: now[0])
    progress.started_at = now[0]
    now[0] += 20.0  # loading the model, encoding the prompt: nothing to do with the steps still to come
    for step in range(1, 4):
        progress.step = step
        progress.note_step()
        if step < 3:
            now[0] += 1.0  # one second per step
    assert progress.eta_seconds == pytest.approx(7.0)  # 7 steps left at 1 s each (not 23 s x 7/3 = 53.7 s)
    now[0] += 0.5
    assert progress.eta_seconds == pytest.approx(6.5)


def test_time_left_is_unknown_until_two_steps_are_measured():
    progress = JobProgress(steps_per_batch=10, clock=lambda: 5.0)
    assert progress.eta_seconds is None
    progress.step = 1
    progress.note_step()
    assert progress.eta_seconds is None


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "Heun", "DPM2", "PLMS", "Euler a"])
def test_steps_are_counted_as_the_user_set_them(services, sampler):
    seen = watch_steps(services)
    job = run_txt2img(services, sampler_name=sampler, steps=4, seed=1)
    assert job.status == "done", job.error
    steps = [step for _, step, _, _ in seen]
    assert {total for _, _, total, _ in seen} == {4}  # never "Step n/7" for a sampler that calls the model twice
    assert steps == sorted(steps) and steps[-1] == 4 and steps[0] <= 1
    assert job.progress.fraction == 1.0


def test_hires_fix_is_one_bar_over_both_passes(services):
    seen = watch_steps(services)
    job = run_txt2img(services, steps=3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
                      denoising_strength=0.5, n_iter=2, seed=2)
    assert job.status == "done", job.error
    assert {total for _, _, total, _ in seen} == {3 + 2}  # the second pass runs 4 x 0.5 steps
    per_batch = [[step for batch, step, _, _ in seen if batch == number] for number in range(2)]
    assert per_batch == [[1, 2, 3, 4, 5]] * 2
    fractions = [fraction for *_, fraction in seen]
    assert fractions == sorted(fractions)  # the bar never jumps back when the second pass starts


def test_interrupt_keeps_the_image_being_made_and_starts_no_further_batch(services):
    def interrupt_in_second_batch(job, seen):
        if seen[-1][:2] == (1, 2):
            services.jobs.interrupt(job.id)

    watch_steps(services, interrupt_in_second_batch)
    job = run_txt2img(services, steps=6, n_iter=3, seed=10, prompt="partial")
    assert job.status == "interrupted"
    first, partial = job.result.images  # the finished first batch, and the second one as far as it got
    assert [image.seed for image in job.result.images] == [10, 11]
    assert partial.path and Image.open(partial.path).info["parameters"] == partial.infotext
    assert Image.open(io.BytesIO(partial.png)).size == (64, 64)
    assert "Seed: 11" in partial.infotext
    services.extensions.hooks.on_step.clear()
    full = run_txt2img(services, steps=6, seed=11, prompt="partial").result.images[0]
    difference = np.abs(np.asarray(Image.open(io.BytesIO(full.png)), dtype=int)
                        - np.asarray(Image.open(io.BytesIO(partial.png)), dtype=int)).mean()
    assert difference > 1  # made from the latents after two of six steps, not the finished image
    assert sorted(row["path"] for row in services.history.images()) == sorted(
        [first.path, partial.path, full.path])


def test_interrupt_in_the_first_hires_pass_keeps_the_first_pass_image(services):
    def interrupt_early(job, seen):
        if seen[-1][1] == 1:
            services.jobs.interrupt(job.id)

    watch_steps(services, interrupt_early)
    job = run_txt2img(services, steps=3, enable_hr=True, hr_scale=2, seed=3)
    assert job.status == "interrupted"
    (image,) = job.result.images
    assert Image.open(image.path).size == (64, 64)  # the first pass's size: the second pass never ran


def test_stopping_the_server_saves_no_partial_image(services):
    def stop_in_first_batch(job, seen):
        if seen[-1][1] == 2:
            job.progress.keep_partial = False  # what JobQueue.stop does to every unfinished job
            services.jobs.interrupt(job.id)

    watch_steps(services, stop_in_first_batch)
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**FAST, "steps": 6, "n_iter": 2}), timeout=300)
    assert job.status == "interrupted" and job.result.images == []
    assert not (services.settings.outputs_dir / "txt2img-images").exists()
