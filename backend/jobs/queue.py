"""One queue of jobs, run one at a time by a worker thread that owns the model/GPU.

Each job has an id, its own progress and its own interrupt flag: interrupting one job never touches
another. A failing job is recorded as failed and the worker moves on. Faults have one place here:
- out of memory: the caches are freed (`on_out_of_memory`) and the job is retried once, then failed with a
  message that says what to change;
- a job that ends its worker thread (SystemExit, KeyboardInterrupt, ...): the job is failed and recorded,
  its waiters are released and a new worker thread takes over the queue.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from backend.core.errors import BatchSkipped, DuplicateJobId, JobInterrupted, TooManyJobs, UserError, is_out_of_memory
from backend.core.requests import GenerationResult, JobRequest

log = logging.getLogger(__name__)
FINISHED_JOBS_KEPT = 1000  # older finished jobs are forgotten so a long-running server does not grow
MAX_PENDING_PER_CLIENT = 16  # queued or running jobs one client address may have; behind a share link all share one
OUT_OF_MEMORY_ADVICE = "try a smaller size, batch size or upscale factor"
SERVER_STOPPED = "the server stopped before this job finished"
WORKER_STOPPED = "the worker stopped unexpectedly ({reason}) while running this job; a new worker runs the queue"


@dataclass
class JobProgress:
    """Live progress of one job, written by the worker and read by anyone.

    `step` counts sampling steps as the user set them (a second-order sampler calls the model twice per step;
    a hires fix's two passes make one count), `steps_per_batch` is their total per batch. The time left is
    estimated from the steps measured so far, so model loading and other start-up costs do not inflate it."""
    step: int = 0
    steps_per_batch: int = 0
    batch: int = 0
    batches: int = 1
    part: int = 0  # a job of several generations (img2img Batch: one per input image): the one running, 0-based
    parts: int = 1
    started_at: float | None = None
    preview: Any = None  # a PIL image of the current latents, refreshed every few steps
    preview_step: int = 0
    interrupt_requested: bool = False
    keep_partial: bool = True  # an interrupted job keeps the image it was making, as in A1111 (not at shutdown)
    skip_requested: bool = False
    on_image: Callable[[Any], None] | None = None  # called with each ImageResult as soon as it is saved
    clock: Callable[[], float] = time.monotonic
    _first_step: tuple[float, int] | None = field(default=None, init=False, repr=False)  # (time, steps done)
    _last_step: tuple[float, int] | None = field(default=None, init=False, repr=False)

    @property
    def steps_done(self) -> int:
        """Over the whole job: the parts before this one count as the same number of steps as this one."""
        return (self.part * self.batches + self.batch) * self.steps_per_batch + self.step

    @property
    def steps_total(self) -> int:
        return self.parts * self.batches * self.steps_per_batch

    @property
    def fraction(self) -> float:
        if not self.steps_per_batch:
            return 0.0
        return min(1.0, self.steps_done / self.steps_total)

    def note_step(self):
        """Record that `step` advanced: the time-left estimate is made from these measurements."""
        now, done = self.clock(), self.steps_done
        if self._first_step is None:
            self._first_step = (now, done)
        self._last_step = (now, done)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace of the steps measured so far (from the first measured step on); None until
        two steps have been measured."""
        if self._first_step is None or self._last_step is None or self._last_step[1] <= self._first_step[1]:
            return None
        (first_time, first_done), (last_time, last_done) = self._first_step, self._last_step
        seconds_per_step = (last_time - first_time) / (last_done - first_done)
        remaining = self.steps_total - last_done
        return max(0.0, seconds_per_step * remaining - (self.clock() - last_time))

    def restart(self):
        """Back to the first step of the first batch, for a retry; interrupt requests are kept."""
        self.step = self.batch = self.part = 0
        self.skip_requested = False
        self._first_step = self._last_step = None

    def image_saved(self, image):
        if self.on_image is not None:
            self.on_image(image)

    def check_interrupt(self):
        if self.interrupt_requested:
            raise JobInterrupted()
        self.check_skip()

    def check_skip(self):
        if self.skip_requested:
            self.skip_requested = False
            raise BatchSkipped()


JobStatus = Literal["queued", "running", "done", "failed", "interrupted"]


@dataclass
class Job:
    request: JobRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: JobStatus = "queued"
    progress: JobProgress = field(default_factory=JobProgress)
    result: GenerationResult | None = None
    error: str | None = None
    error_field: str | None = None
    error_status: int | None = None  # the HTTP status of a failure: the UserError's own (4xx), or 500 if internal
    sequence: int = 0  # FIFO order, also across restarts
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    client: str | None = None  # the address that sent it (None: the server itself, e.g. a test)
    worker: str | None = None  # the pool worker running or last running it (None: the in-process worker)
    lost_on: str | None = None  # the pool worker whose process ended while running it (retried once elsewhere)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


class JobQueue:
    def __init__(self, run_job: Callable[[Any, JobProgress], Any], history=None,
                 on_out_of_memory: Callable[[], None] | None = None,
                 max_pending_per_client: int = MAX_PENDING_PER_CLIENT):
        self._run_job = run_job
        self.max_pending_per_client = max_pending_per_client
        self._history = history  # a JobHistory, or None to keep nothing on disk
        self._on_out_of_memory = on_out_of_memory  # frees caches before an out-of-memory job is retried
        self._queue: queue.Queue = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._order = itertools.count(history.next_sequence() if history else 1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None  # the job the worker runs, so a worker that vanishes can fail it
        self._stopping = threading.Event()
        self.jobs_run = 0  # jobs the in-process worker ran to an end (the Queue panel's "jobs done")

    def start(self):
        with self._lock:
            if self._thread is None:
                self._thread = self._start_worker()

    def stop(self, timeout: float = 30) -> bool:
        """Stop for good (the server is closing): queued jobs never start, the running one stops at its next step
        without saving the image it was making, and the worker ends. Every unfinished job is recorded as
        interrupted. True when the worker ended within `timeout` seconds."""
        self._stopping.set()
        with self._lock:
            unfinished = [job for job in self._jobs.values() if not job.done]
            worker = self._thread
        for job in unfinished:
            job.progress.keep_partial = False
            job.progress.interrupt_requested = True
        self._queue.put(None)
        stopped = True
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=timeout)
            stopped = not worker.is_alive()
        for job in unfinished:
            if not job.done and (job.status != "running" or not stopped):  # never started, or still running
                job.status, job.error = "interrupted", job.error or SERVER_STOPPED
                self._finish(job)
            elif job.status == "interrupted" and not job.error:  # stopped at its next step: say why
                job.error = SERVER_STOPPED
                self._record(job)
        return stopped

    def submit(self, request, job_id: str | None = None, client: str | None = None) -> Job:
        """Queue a request; `job_id` lets a client choose the id (A1111's force_task_id); `client` (its address)
        may have at most `max_pending_per_client` jobs queued or running (TooManyJobs), so that one client cannot
        fill the queue in front of everyone else."""
        with self._lock:
            if job_id is not None and job_id in self._jobs:
                raise DuplicateJobId(job_id)
            if client is not None:
                pending = sum(1 for job in self._jobs.values() if job.client == client and not job.done)
                if pending >= self.max_pending_per_client:
                    raise TooManyJobs(f"{pending} of your jobs are queued or running, the most one client may have; "
                                      "wait for one to finish")
            job = Job(request=request, sequence=next(self._order), client=client,
                      **({"id": job_id} if job_id else {}))
            finished = [old_id for old_id, old in self._jobs.items() if old.done]
            for old_id in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
                del self._jobs[old_id]
            self._jobs[job.id] = job
            self._record(job)
            self._enqueue(job)
        self._ensure_worker()  # a worker that died some other way is replaced rather than leaving jobs waiting
        return job

    def _enqueue(self, job: Job):
        """Hand a new job to whatever starts jobs (called with the lock held)."""
        self._queue.put(job)

    def _record(self, job: Job):
        if self._history is not None:
            self._history.record_job(job)

    def position(self, job: Job) -> int | None:
        """0 while running, N when N jobs run or wait before it, None when finished."""
        if job.done:
            return None
        if job.status == "running":
            return 0
        with self._lock:
            return sum(1 for other in self._jobs.values()
                       if other.status in ("queued", "running") and other.sequence < job.sequence)

    def running(self) -> Job | None:
        with self._lock:
            return next((job for job in self._jobs.values() if job.status == "running"), None)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def pending(self) -> list[Job]:
        with self._lock:
            return sorted((j for j in self._jobs.values() if j.status in ("queued", "running")),
                          key=lambda job: job.sequence)

    def interrupt(self, job_id: str) -> bool:
        """Stop that job at its next step (a queued one never starts); images already made are kept, and the
        image it was making is finished from the current latents and saved, as A1111 does."""
        job = self.get(job_id)
        if job is None or job.done:
            return False
        job.progress.interrupt_requested = True
        return True

    def skip(self, job_id: str) -> bool:
        """Drop the batch being generated and go on with the job's next batch."""
        job = self.get(job_id)
        if job is None or job.status != "running":
            return False
        job.progress.skip_requested = True
        return True

    def run_and_wait(self, request, timeout: float | None = None, client: str | None = None) -> Job:
        job = self.submit(request, client=client)
        job.finished.wait(timeout)
        return job

    # --- the worker ---------------------------------------------------------------------------------
    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        worker.start()
        return worker

    def _ensure_worker(self, leaving: threading.Thread | None = None):
        """Start a new worker when the queue was started and its worker is gone (or is `leaving`, the
        worker itself on its way out); a job the old worker left running is failed first."""
        with self._lock:
            worker = self._thread
            if worker is None or self._stopping.is_set() or (worker.is_alive() and worker is not leaving):
                return
            orphan, self._current = self._current, None
            self._thread = self._start_worker()
        if orphan is not None and not orphan.done:
            orphan.status, orphan.error = "failed", WORKER_STOPPED.format(reason="its thread ended")
            self._finish(orphan)

    def _work(self):
        try:
            while not self._stopping.is_set():
                job = self._queue.get()
                if job is not None:
                    self._run_one(job)
        except BaseException as error:  # a job ended the thread (SystemExit, KeyboardInterrupt, ...)
            log.error("the generation worker stopped unexpectedly (%s); starting a new one", _describe(error),
                      exc_info=error)
        finally:
            self._ensure_worker(leaving=threading.current_thread())

    def _run_one(self, job: Job):
        if job.progress.interrupt_requested:  # interrupted while it waited: it never starts
            job.status = "interrupted"
            self._finish(job)
            return
        job.status, job.started_at = "running", time.time()
        job.progress.started_at = time.monotonic()
        if self._history is not None:  # each image is indexed when saved: a job that never ends loses none
            job.progress.on_image = lambda image: self._index_image(job, image)
        self._current = job
        self._record(job)
        try:
            job.result = self._run_with_oom_retry(job)
            job.status = "interrupted" if getattr(job.result, "interrupted", False) else "done"
        except JobInterrupted:  # raised past the generator (by an extension's wrapper, say): still an interrupt
            job.status = "interrupted"
        except BaseException as error:
            job.status = "failed"
            job.error, job.error_field, job.error_status = self._failure_message(job, error)
            if not isinstance(error, Exception):
                raise  # this thread must end (SystemExit, ...); _work hands the queue to a new worker
        finally:
            self._current = None
            self.jobs_run += 1
            self._finish(job)

    def _run_with_oom_retry(self, job: Job):
        try:
            return self._run_job(job.request, job.progress)
        except Exception as error:
            if not (is_out_of_memory(error) and self._on_out_of_memory and not job.progress.interrupt_requested):
                raise
            log.warning("job %s ran out of memory (%s); freeing the model cache and retrying once", job.id, error)
        # Outside the except block, so the failed attempt's tensors (held by its traceback) are released first.
        self._on_out_of_memory()
        if self._history is not None:
            self._history.forget_images(job.id)  # the attempt's files were removed; the retry saves its own
        job.progress.restart()
        return self._run_job(job.request, job.progress)

    def _failure_message(self, job: Job, error: BaseException) -> tuple[str, str | None, int]:
        """(message for the user, offending request field or None, HTTP status). Decided by the error's type: a
        UserError is the user's to fix; anything else is internal (logged with its traceback)."""
        if isinstance(error, UserError):
            return str(error), error.field, error.status
        if is_out_of_memory(error):
            freed = "; freed the model cache and retried once" if self._on_out_of_memory else ""
            return f"out of memory while generating{freed}: {OUT_OF_MEMORY_ADVICE}", None, 422
        if not isinstance(error, Exception):
            return WORKER_STOPPED.format(reason=_describe(error)), None, 500
        log.exception("job %s failed", job.id)
        return f"internal error: {_describe(error)}", None, 500

    def _index_image(self, job: Job, image):
        try:
            self._history.record_images(job.id, [image])
        except Exception:  # the image is saved; the history is an index, and the job goes on
            log.exception("could not index an image of job %s in the history", job.id)

    def _finish(self, job: Job):
        """Record the outcome and release the waiters, whatever happened."""
        job.finished_at = time.time()
        try:
            if self._history is not None and job.result is not None:  # any not indexed when saved (extensions')
                self._history.record_images(job.id, job.result.images)
            self._record(job)
        except Exception:  # a history failure must not lose the job's result or stop the worker
            log.exception("could not record job %s in the history", job.id)
        job.finished.set()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
