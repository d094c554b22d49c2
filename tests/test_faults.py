"""Faults a server meets in real life, each followed by a normal job that must still work exactly as before:
out-of-memory inside a job, a full disk while saving, a job that kills its worker thread, and hostile or
corrupt checkpoint and upscaler files from strangers."""
from __future__ import annotations

import errno
import io
import pathlib
import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

import backend.jobs.outputs
from backend.core.requests import ExtrasRequest, Txt2ImgRequest, build_request
from backend.jobs.queue import JobQueue
from backend.models.weight_files import CheckpointError
from tests.conftest import FAST, run_txt2img
from tests.tiny_upscalers import esrgan_state, save, write_upscaler_folder


def result_pixels(job, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(job.result.images[index].png)).convert("RGB"), dtype=np.int16)


def saved_names(folder: pathlib.Path) -> list[str]:
    """Every file in an outputs folder, hidden temporary files included."""
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def assert_done(job):
    assert job.status == "done", job.error


# --- out of memory ------------------------------------------------------------------------------------
OUT_OF_MEMORY_ERRORS = {
    "torch OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "RuntimeError of older torch / MPS": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
}
# Where the fault strikes: inside the denoising loop (the UNet) or in the final decode (the VAE).
INJECTION_POINTS = {"denoise": (UNet2DConditionModel, "forward"), "decode": (AutoencoderKL, "decode")}


def inject_out_of_memory(monkeypatch, where: str, make_error, failing_calls):
    """Make the calls numbered in `failing_calls` (1 = first call) at `where` raise `make_error()`."""
    owner, name = INJECTION_POINTS[where]
    original = getattr(owner, name)
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) in failing_calls:
            raise make_error()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return calls


@pytest.mark.parametrize("error_kind", list(OUT_OF_MEMORY_ERRORS))
def test_out_of_memory_once_frees_the_cache_and_the_retry_succeeds_without_duplicates(
        services, monkeypatch, error_kind):
    services.models.select("tiny-sd1-other.safetensors")  # a second model in the cache, to be freed
    loads_before = services.models.stats.loads
    # Two batches; the decode of the second one fails once: the first batch's image is already saved.
    inject_out_of_memory(monkeypatch, "decode", OUT_OF_MEMORY_ERRORS[error_kind], failing_calls={2})
    job = run_txt2img(services, seed=21, n_iter=2, checkpoint="tiny-sd1.safetensors")
    monkeypatch.undo()
    assert_done(job)
    assert [image.seed for image in job.result.images] == [21, 22]
    # The cache was emptied (the other model is gone) and the job's own model loaded again for the retry.
    assert services.models.cached_titles() == [services.models.resolve("tiny-sd1.safetensors").title]
    assert services.models.stats.loads == loads_before + 2
    # The first attempt's saved image was removed: each image is on disk once, numbered without gaps.
    folder = services.outputs.folder("txt2img")
    assert saved_names(folder) == ["00000-21.png", "00001-22.png"]
    assert [pathlib.Path(image.path).name for image in job.result.images] == ["00000-21.png", "00001-22.png"]
    assert [row["path"] for row in services.history.images()] == [image.path for image in job.result.images][::-1]

    normal = run_txt2img(services, seed=21, n_iter=2, checkpoint="tiny-sd1.safetensors")
    assert_done(normal)
    for index in range(2):
        assert np.array_equal(result_pixels(job, index), result_pixels(normal, index))
    assert saved_names(folder) == ["00000-21.png", "00001-22.png", "00002-21.png", "00003-22.png"]


@pytest.mark.parametrize("where", list(INJECTION_POINTS))
@pytest.mark.parametrize("error_kind", list(OUT_OF_MEMORY_ERRORS))
def test_out_of_memory_twice_fails_the_job_with_advice_and_the_next_job_succeeds(
        services, monkeypatch, where, error_kind):
    reference = run_txt2img(services, seed=5)
    assert_done(reference)
    loads_before = services.models.stats.loads
    calls = inject_out_of_memory(monkeypatch, where, OUT_OF_MEMORY_ERRORS[error_kind], failing_calls=range(1, 100))
    failed = run_txt2img(services, seed=5)
    monkeypatch.undo()
    assert len(calls) == 2, "the job is tried exactly twice"
    assert failed.status == "failed" and failed.result is None
    assert failed.error == ("out of memory while generating; freed the model cache and retried once: "
                            "try a smaller size, batch size or upscale factor")
    assert services.history.job(failed.id)["status"] == "failed"
    assert services.history.job(failed.id)["error"] == failed.error
    assert services.models.stats.loads == loads_before + 1  # freed before the retry, which loaded it again

    after = run_txt2img(services, seed=5)
    assert_done(after)
    assert np.array_equal(result_pixels(after), result_pixels(reference))
    assert saved_names(services.outputs.folder("txt2img")) == ["00000-5.png", "00001-5.png"]


def test_other_errors_are_not_retried(services, monkeypatch):
    assert_done(run_txt2img(services, seed=4))  # the first job also samples the VAE for its preview colours
    calls = inject_out_of_memory(monkeypatch, "decode", lambda: RuntimeError("shape mismatch in decode"),
                                 failing_calls={1})
    failed = run_txt2img(services, seed=5)
    monkeypatch.undo()
    assert failed.status == "failed" and len(calls) == 1
    assert failed.error == "internal error: RuntimeError: shape mismatch in decode"
    assert services.models.cached_titles() != []  # nothing was freed for an error that is not about memory


# --- disk full -------------------------------------------------------------------------------------------
class FillingFile:
    """A file on a disk that fills up half way through the write."""

    def __init__(self, real):
        self.real = real

    def write(self, data: bytes):
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.real.close()


def test_disk_full_fails_the_job_leaves_no_partial_file_and_numbering_holds(services, monkeypatch):
    reference = run_txt2img(services, seed=8)
    assert_done(reference)
    folder = services.outputs.folder("txt2img")
    assert saved_names(folder) == ["00000-8.png"]
    original_fdopen = backend.jobs.outputs.os.fdopen
    monkeypatch.setattr(backend.jobs.outputs.os, "fdopen", lambda fd, mode="r", *a, **k: FillingFile(
        original_fdopen(fd, mode, *a, **k)))
    failed = run_txt2img(services, seed=8)
    monkeypatch.undo()
    assert failed.status == "failed" and failed.result is None
    assert failed.error == f"disk full while saving to {folder}: No space left on device"
    assert services.history.job(failed.id)["error"] == failed.error
    assert saved_names(folder) == ["00000-8.png"], "a partial or temporary file was left behind"

    after = run_txt2img(services, seed=8)
    assert_done(after)
    assert saved_names(folder) == ["00000-8.png", "00001-8.png"]
    assert np.array_equal(result_pixels(after), result_pixels(reference))
    assert (folder / "00001-8.png").read_bytes() == after.result.images[0].png


# --- a worker that dies ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stopper", [SystemExit, KeyboardInterrupt])
def test_a_job_that_kills_the_worker_is_failed_and_a_new_worker_runs_the_queue(services, monkeypatch, stopper):
    reference = run_txt2img(services, seed=4)
    assert_done(reference)
    first_worker = services.jobs._thread
    run_job = services.jobs._run_job

    def killing(request, progress):
        if request.prompt == "kill the worker":
            raise stopper("stop right here")
        return run_job(request, progress)

    monkeypatch.setattr(services.jobs, "_run_job", killing)
    killer = services.jobs.submit(Txt2ImgRequest(**FAST, prompt="kill the worker"))
    queued = services.jobs.submit(Txt2ImgRequest(**FAST, seed=4))  # waits behind the killer
    assert killer.finished.wait(60), "waiters of the killed job were never released"
    assert killer.status == "failed"
    assert killer.error.startswith(f"the worker stopped unexpectedly ({stopper.__name__}: stop right here)")
    assert services.history.job(killer.id)["status"] == "failed"
    assert queued.finished.wait(60), "the job queued behind the killer never ran"
    assert_done(queued)
    assert np.array_equal(result_pixels(queued), result_pixels(reference))
    assert services.jobs._thread is not first_worker and services.jobs._thread.is_alive()
    assert not first_worker.is_alive()

    after = run_txt2img(services, seed=4)  # and the queue keeps going
    assert_done(after)
    assert np.array_equal(result_pixels(after), result_pixels(reference))


class Plain:
    """A stand-in request for a queue without the generation stack."""
    prompt = "plain"

    def model_dump_json(self, **_):
        return "{}"


def test_a_worker_that_vanishes_mid_job_is_replaced_and_stop_still_works():
    ran = []
    jobs = JobQueue(lambda request, progress: ran.append(request) or "result")
    jobs.start()
    original_run_one = jobs._run_one

    def vanish(job):  # the thread ends without the queue's own handling: nothing records the job
        jobs._run_one = original_run_one
        job.status, jobs._current = "running", job
        raise SystemExit

    jobs._run_one = vanish
    lost = jobs.submit(Plain())
    assert lost.finished.wait(10)
    assert lost.status == "failed" and "the worker stopped unexpectedly (its thread ended)" in lost.error
    later = jobs.run_and_wait(Plain(), timeout=10)
    assert later.status == "done" and later.result == "result" and len(ran) == 1
    worker = jobs._thread
    jobs.stop()
    assert not worker.is_alive()


def test_submit_replaces_a_worker_that_is_already_gone():
    jobs = JobQueue(lambda request, progress: "result")
    jobs.start()
    jobs.stop()
    jobs._stopping.clear()  # a worker that ended without stop() being asked for: the queue is still open
    assert not jobs._thread.is_alive()
    job = jobs.run_and_wait(Plain(), timeout=10)
    assert job.status == "done" and jobs._thread.is_alive()
    jobs.stop()


def test_a_never_started_queue_does_not_start_itself():
    jobs = JobQueue(lambda request, progress: "result")
    job = jobs.submit(Plain())
    time.sleep(0.1)
    assert job.status == "queued" and jobs._thread is None


# --- hostile and corrupt files ----------------------------------------------------------------------------
class CodePayload:
    """Unpickling this creates a marker file: a stand-in for a pickle that runs code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_code_pickle(path: pathlib.Path, marker: pathlib.Path, tensors: dict) -> pathlib.Path:
    torch.save({"state_dict": tensors, "params": tensors, "payload": CodePayload(marker)}, path)
    return path


def write_bogus_header_length(path: pathlib.Path, good: pathlib.Path) -> pathlib.Path:
    data = good.read_bytes()
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])  # says a terabyte of JSON follows
    return path


def write_short_header_length(path: pathlib.Path, good: pathlib.Path) -> pathlib.Path:
    data = good.read_bytes()
    length = int.from_bytes(data[:8], "little")
    path.write_bytes((length - 20).to_bytes(8, "little") + data[8:])  # the JSON is cut off
    return path


def write_plain_pickle(path: pathlib.Path, good: pathlib.Path) -> pathlib.Path:
    """The good file's weights, harmless, but as a pickle under a .safetensors name."""
    from safetensors.torch import load_file

    torch.save(load_file(str(good)), path)
    return path


def write_truncated(path: pathlib.Path, good: pathlib.Path) -> pathlib.Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# name -> (file name, writer(path, good file, marker), what the message says)
HOSTILE_FILES = {
    "pickle with code": ("evil.ckpt", lambda path, good, marker: write_code_pickle(
        path, marker, {"weight": torch.zeros(1)}), "refusing to run its code"),
    "pickle with code renamed .safetensors": ("evil-renamed.safetensors", lambda path, good, marker: write_code_pickle(
        path, marker, {"weight": torch.zeros(1)}), "named .safetensors but is a PyTorch pickle"),
    "plain pickle renamed .safetensors": ("plain-renamed.safetensors", lambda path, good, marker: write_plain_pickle(
        path, good), "named .safetensors but is a PyTorch pickle"),
    "bogus safetensors header length": ("bogus-header.safetensors", lambda path, good, marker: (
        write_bogus_header_length(path, good)), "truncated or corrupt"),
    "safetensors header length too short": ("short-header.safetensors", lambda path, good, marker: (
        write_short_header_length(path, good)), "not a valid safetensors file"),
    "truncated safetensors": ("truncated.safetensors", lambda path, good, marker: write_truncated(path, good),
                              "not a valid safetensors file"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_FILES))
def test_hostile_checkpoint_is_refused_and_the_loaded_model_keeps_serving(services, models_dir, tmp_path, kind):
    file_name, write, message = HOSTILE_FILES[kind]
    good = services.models.select("tiny-sd1.safetensors")
    reference = run_txt2img(services, seed=6)
    assert_done(reference)
    loads = services.models.stats.loads
    marker = tmp_path / "payload-ran"
    write(models_dir / "Stable-diffusion" / file_name, models_dir / "Stable-diffusion" / "tiny-sd1.safetensors",
          marker)
    services.models.refresh()

    with pytest.raises(CheckpointError) as refused:
        services.models.select(file_name)
    assert file_name in str(refused.value) and message in str(refused.value)
    assert services.models.selected == good
    failed = run_txt2img(services, seed=6, checkpoint=file_name)
    assert failed.status == "failed" and file_name in failed.error and message in failed.error
    assert not marker.exists(), "the pickle's code ran"

    after = run_txt2img(services, seed=6)
    assert_done(after)
    assert np.array_equal(result_pixels(after), result_pixels(reference))
    assert f"Model hash: {good.short_hash}" in after.result.images[0].infotext
    assert services.models.stats.loads == loads, "the serving model was reloaded"
    assert services.models.cached_titles() == [good.title]


def picture() -> bytes:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((24, 20), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_extras(services, **fields):
    job = services.jobs.run_and_wait(build_request(ExtrasRequest, {"images": [picture()], **fields}), timeout=300)
    assert job.done, "job did not finish"
    return job


@pytest.mark.parametrize("kind", list(HOSTILE_FILES))
def test_hostile_upscaler_is_refused_and_the_loaded_upscaler_keeps_serving(services, models_dir, tmp_path, kind):
    file_name, write, message = HOSTILE_FILES[kind]
    file_name = file_name.replace(".ckpt", ".pth")  # the upscaler folders list .pth and .safetensors
    write_upscaler_folder(models_dir)
    reference = run_extras(services, upscaler_1="tiny-esrgan-4x")
    assert_done(reference)
    loads = services.upscalers.models.stats.loads
    marker = tmp_path / "payload-ran"
    good_esrgan = save(tmp_path / "esrgan-for-copy.safetensors", esrgan_state(2, seed=5))
    path = write(models_dir / "ESRGAN" / file_name, good_esrgan, marker)
    services.upscalers.refresh()
    assert not marker.exists(), "the pickle's code ran while the upscalers were listed"

    name = path.stem
    failed = run_extras(services, upscaler_1=name)
    assert failed.status == "failed" and failed.error_field == "upscaler_1"
    assert file_name in failed.error and message in failed.error
    assert name not in services.upscalers.names()
    assert not marker.exists(), "the pickle's code ran"

    after = run_extras(services, upscaler_1="tiny-esrgan-4x")
    assert_done(after)
    assert np.array_equal(result_pixels(after), result_pixels(reference))
    assert services.upscalers.models.stats.loads == loads, "the serving upscaler was reloaded"


def test_upscaler_file_corrupted_after_it_was_listed_fails_the_job_clearly(services, models_dir):
    files = write_upscaler_folder(models_dir)
    reference = run_extras(services, upscaler_1="tiny-esrgan-4x")
    assert_done(reference)
    write_truncated(files["compact-4x"], files["compact-4x"])  # replaced on disk after the scan
    failed = run_extras(services, upscaler_1="tiny-compact-x4")
    assert failed.status == "failed" and "tiny-compact-x4.safetensors" in failed.error
    assert "not a valid safetensors file" in failed.error
    after = run_extras(services, upscaler_1="tiny-esrgan-4x")
    assert_done(after)
    assert np.array_equal(result_pixels(after), result_pixels(reference))
