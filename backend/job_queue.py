"""One queue of jobs, run one at a time by a worker thread that owns the model/GPU.

Each job has an id, its own progress and its own interrupt flag: interrupting one job never touches
another. A failing job is recorded as failed and the worker moves on.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from backend.checkpoint_files import CheckpointError
from backend.requests import RequestError

log = logging.getLogger(__name__)
FINISHED_JOBS_KEPT = 1000  # older finished jobs are forgotten so a long-running server does not grow


class JobInterrupted(Exception):
    """Raised inside a job when its own interrupt flag is set."""


@dataclass
class JobProgress:
    """Live progress of one job, written by the worker and read by anyone."""
    step: int = 0
    steps_per_batch: int = 0
    batch: int = 0
    batches: int = 1
    started_at: float | None = None
    preview: Any = None
    interrupt_requested: bool = False

    @property
    def fraction(self) -> float:
        if not self.steps_per_batch:
            return 0.0
        return min(1.0, (self.batch * self.steps_per_batch + self.step) / (self.batches * self.steps_per_batch))

    @property
    def eta_seconds(self) -> float | None:
        if self.started_at is None or self.fraction <= 0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.fraction - elapsed

    def check_interrupt(self):
        if self.interrupt_requested:
            raise JobInterrupted()


@dataclass
class Job:
    request: Any
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"  # queued | running | done | failed | interrupted
    progress: JobProgress = field(default_factory=JobProgress)
    result: Any = None
    error: str | None = None
    error_field: str | None = None
    created_at: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


class JobQueue:
    def __init__(self, run_job: Callable[[Any, JobProgress], Any]):
        self._run_job = run_job
        self._queue: queue.Queue = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="generation-worker", daemon=True)
            self._thread.start()

    def stop(self):
        self._stopping.set()
        self._queue.put((-1, None))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request) -> Job:
        job = Job(request=request)
        with self._lock:
            finished = [job_id for job_id, old in self._jobs.items() if old.done]
            for job_id in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
                del self._jobs[job_id]
            self._jobs[job.id] = job
        self._queue.put((next(self._order), job))
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def pending(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.status in ("queued", "running")]

    def interrupt(self, job_id: str) -> bool:
        job = self.get(job_id)
        if job is None or job.done:
            return False
        job.progress.interrupt_requested = True
        return True

    def run_and_wait(self, request, timeout: float | None = None) -> Job:
        job = self.submit(request)
        job.finished.wait(timeout)
        return job

    def _work(self):
        while not self._stopping.is_set():
            _, job = self._queue.get()
            if job is None:
                continue
            if job.progress.interrupt_requested:
                job.status = "interrupted"
                job.finished.set()
                continue
            job.status = "running"
            job.progress.started_at = time.monotonic()
            try:
                job.result = self._run_job(job.request, job.progress)
                job.status = "interrupted" if getattr(job.result, "interrupted", False) else "done"
            except RequestError as error:
                job.status, job.error, job.error_field = "failed", str(error), error.field
            except (CheckpointError, ValueError) as error:
                job.status, job.error = "failed", str(error)
            except Exception as error:  # the worker must survive anything a job does
                log.exception("job %s failed", job.id)
                job.status, job.error = "failed", f"internal error: {type(error).__name__}: {error}"
            finally:
                job.finished.set()
