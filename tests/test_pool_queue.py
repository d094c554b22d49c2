"""The pool side of the job queue without Ray: which job starts where (cache-aware, FIFO per checkpoint), a lost
worker's job retried once elsewhere, and the images of a worker saved once by the server. Fake workers stand in
for the Ray actors (tests/test_worker_pool.py runs the real ones)."""
from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from backend.core.options import Options
from backend.core.requests import GenerationResult, ImageResult
from backend.jobs.deferred_outputs import PLACEHOLDER_PREFIX, DeferredOutputStore
from backend.jobs.history import JobHistory
from backend.jobs.outputs import OutputStore
from backend.jobs.pool_queue import (
    SCALE_OUT_BACKLOG,
    PoolJobQueue,
    RemoteUserError,
    WorkerLost,
    WorkerResult,
    WorkerState,
)
from backend.models.weight_files import CheckpointError


class Request(BaseModel):
    checkpoint: str | None
    name: str = ""


class FakeWorker:
    """Runs a job when the test releases it; 'loads' a checkpoint it does not hold; saves one image through a
    deferred store, as a real worker does."""

    def __init__(self, worker_id: str, outputs_root: Path):
        self.state = WorkerState(id=worker_id, state="idle")
        self.loads: list[str] = []
        self.ran: list[str] = []
        self.release = threading.Semaphore(0)
        self.lose_next = 0  # this many of the next runs end as if the process died
        self.fail_with: Exception | None = None
        self._store = DeferredOutputStore(outputs_root, options=Options)

    def run(self, job, checkpoint, options) -> WorkerResult:
        self.release.acquire()
        self.ran.append(job.request.name)
        if self.lose_next:
            self.lose_next -= 1
            raise WorkerLost("ActorUnavailableError: killed")
        if self.fail_with is not None:
            raise self.fail_with
        if checkpoint is not None and checkpoint not in self.loads:
            self.loads.append(checkpoint)
        self.state.models = list(self.loads)
        self.state.jobs_done += 1
        image = Image.new("RGB", (8, 8), (200, 10, 10))
        path = self._store.save_image(image, "txt2img", f"made by {self.state.id}")
        result = GenerationResult(images=[ImageResult(png=b"png", path=str(path), seed=1, prompt=job.request.name,
                                                      negative_prompt="", infotext="")])
        return WorkerResult(result, self._store.take_writes())

    def wait_until_back(self, timeout: float) -> bool:
        self.state.state = "idle"
        return True


class FakePool:
    def __init__(self, workers):
        self.workers = workers
        self.error = None

    def start(self, on_change):
        on_change()

    def stop(self):
        pass


def pool_queue(tmp_path, count=2, history=None):
    workers = [FakeWorker(f"worker-{index}", tmp_path / "outputs") for index in range(count)]
    queue = PoolJobQueue(FakePool(workers), lambda request: request.checkpoint, lambda request: Options(),
                         OutputStore(tmp_path / "outputs"), history)
    queue.start()
    return queue, workers


def submit(queue, *names_and_checkpoints):
    return [queue.submit(Request(checkpoint=checkpoint, name=name)) for name, checkpoint in names_and_checkpoints]


def wait_started(job, timeout=10.0):
    done = threading.Event()
    while not done.wait(0.01):
        if job.worker is not None or job.done:
            return job.worker
        timeout -= 0.01
        assert timeout > 0, f"{job.request.name} never started"


def run_all(workers, jobs, timeout=10.0):
    """Release the workers job by job until every job has finished."""
    for _ in range(len(jobs) * 3):
        for worker in workers:
            if worker.state.state == "busy":
                worker.release.release()
        if all(job.finished.wait(0.05) for job in jobs):
            return
    assert all(job.done for job in jobs), [(job.request.name, job.status) for job in jobs]


def test_each_checkpoint_stays_on_the_worker_that_loaded_it(tmp_path):
    queue, workers = pool_queue(tmp_path)
    jobs = submit(queue, ("x1", "X"), ("y1", "Y"), ("x2", "X"), ("y2", "Y"), ("x3", "X"), ("y3", "Y"))
    run_all(workers, jobs)
    by_worker = {worker.state.id: worker.ran for worker in workers}
    assert sorted(by_worker.values()) == [["x1", "x2", "x3"], ["y1", "y2", "y3"]]  # FIFO per checkpoint, too
    assert [worker.loads for worker in workers] in (
        [["X"], ["Y"]], [["Y"], ["X"]])  # each model loaded once, on one worker
    queue.stop(5)


def test_a_job_prefers_a_free_worker_holding_its_checkpoint_over_the_least_loaded(tmp_path):
    queue, workers = pool_queue(tmp_path)
    first = submit(queue, ("warm", "X"))
    run_all(workers, first)
    warm = next(worker for worker in workers if worker.ran)
    jobs = submit(queue, ("x", "X"))
    assert wait_started(jobs[0]) == warm.state.id  # not the idle worker with fewer jobs done
    run_all(workers, jobs)
    queue.stop(5)


def test_a_long_backlog_for_one_checkpoint_scales_out_to_a_second_worker(tmp_path):
    queue, workers = pool_queue(tmp_path)
    jobs = submit(queue, *[(f"x{index}", "X") for index in range(SCALE_OUT_BACKLOG + 1)])
    assert wait_started(jobs[0]) != wait_started(jobs[1])  # a backlog of SCALE_OUT_BACKLOG behind the first
    run_all(workers, jobs)
    assert all(worker.loads == ["X"] for worker in workers)
    queue.stop(5)


def test_a_short_backlog_waits_for_the_busy_worker_that_holds_the_model(tmp_path):
    queue, workers = pool_queue(tmp_path)
    jobs = submit(queue, ("x1", "X"), ("x2", "X"))
    holder = wait_started(jobs[0])
    other = next(worker for worker in workers if worker.state.id != holder)
    assert not jobs[1].finished.wait(0.3) and jobs[1].status == "queued" and other.state.state == "idle"
    run_all(workers, jobs)
    assert jobs[1].worker == holder and other.loads == []
    queue.stop(5)


def test_images_made_by_a_worker_are_saved_once_by_the_server_with_one_numbering(tmp_path):
    queue, workers = pool_queue(tmp_path)
    jobs = submit(queue, *[(f"job{index}", None) for index in range(4)])
    run_all(workers, jobs)
    paths = [Path(job.result.images[0].path) for job in jobs]
    assert all(path.is_file() and not path.name.startswith(PLACEHOLDER_PREFIX) for path in paths)
    numbers = sorted(int(path.name.split("-")[0].split(".")[0]) for path in paths)
    assert numbers == [0, 1, 2, 3]  # both workers' images numbered in one sequence by the server
    saved = sorted(p.name for p in paths[0].parent.iterdir())
    assert len(saved) == 4 and not any(name.startswith(".") for name in saved)
    with Image.open(paths[0]) as image:
        assert image.getpixel((0, 0)) == (200, 10, 10)
    queue.stop(5)


def test_a_job_whose_worker_died_is_retried_once_on_another_and_recorded_once(tmp_path):
    history = JobHistory(tmp_path / "history.sqlite3")
    queue, workers = pool_queue(tmp_path, history=history)
    job = submit(queue, ("lost", None))[0]
    first = next(worker for worker in workers if worker.state.id == wait_started(job))
    first.lose_next = 1
    run_all(workers, [job])
    assert job.status == "done" and job.lost_on == first.state.id and job.worker != first.state.id
    assert Path(job.result.images[0].path).is_file()
    recorded = [row for row in history.jobs(50) if row["id"] == job.id]
    assert len(recorded) == 1 and recorded[0]["status"] == "done" and recorded[0]["images"] == 1
    assert len(list((tmp_path / "outputs").rglob("*.png"))) == 1  # the lost attempt saved nothing
    queue.stop(5)
    history.close()


def test_a_job_lost_twice_fails_with_a_message_and_the_queue_goes_on(tmp_path):
    queue, workers = pool_queue(tmp_path)
    for worker in workers:
        worker.lose_next = 1
    lost = submit(queue, ("lost", None))[0]
    run_all(workers, [lost])
    assert lost.status == "failed" and "retried once on another worker" in lost.error and lost.error_status == 500
    after = submit(queue, ("after", None))[0]
    run_all(workers, [after])
    assert after.status == "done"
    queue.stop(5)


def test_a_worker_reports_a_checkpoint_that_does_not_load_as_a_local_load_would(tmp_path):
    queue, workers = pool_queue(tmp_path)
    local = CheckpointError("broken.safetensors: not a checkpoint")
    for worker in workers:
        worker.fail_with = RemoteUserError(local.field, local.message, local.status)
    job = submit(queue, ("broken", "broken"))[0]
    run_all(workers, [job])
    assert (job.status, job.error, job.error_field, job.error_status) == (
        "failed", str(local), local.field, local.status)
    queue.stop(5)


def test_a_pool_that_could_not_start_fails_queued_jobs_with_its_reason(tmp_path):
    pool = FakePool([])
    pool.error = "the worker pool could not start: ConnectionError: no Ray cluster at 10.0.0.9:6379"
    queue = PoolJobQueue(pool, lambda request: None, lambda request: Options(), OutputStore(tmp_path / "outputs"))
    queue.start()
    job = submit(queue, ("orphan", None))[0]
    assert job.finished.wait(5)
    assert job.status == "failed" and "no Ray cluster" in job.error and job.error_status == 503
    queue.stop(5)


def test_every_job_runs_exactly_once_when_workers_are_quick(tmp_path):
    queue, workers = pool_queue(tmp_path)
    for worker in workers:
        for _ in range(100):
            worker.release.release()  # no waiting: the dispatcher picks the next job at once
    jobs = submit(queue, *[(f"job{index}", None) for index in range(30)])
    assert all(job.finished.wait(10) for job in jobs)
    ran = sorted(name for worker in workers for name in worker.ran)
    assert ran == sorted(job.request.name for job in jobs)  # none twice, none skipped
    queue.stop(5)
