"""The job queue with a pool of workers in other processes (`--workers`, `--ray-address`) instead of the one
in-process worker thread. Everything in front of the queue (ids, history, per-client limits, interrupt and skip by
job id, positions) is JobQueue's own; what differs is who runs a job and which job starts next:

- the oldest queued job starts first, on a free worker that already holds its checkpoint, else on the least-loaded
  free worker (fewest models loaded, then fewest jobs done);
- a job whose checkpoint a busy worker holds waits for that worker rather than loading the model a second time
  elsewhere, unless SCALE_OUT_BACKLOG or more jobs for that checkpoint are waiting; jobs for other checkpoints may
  start meanwhile (starts stay in order per checkpoint);
- a worker whose process ends while it runs a job (`WorkerLost`) is replaced by the pool; the job is retried once on
  another worker, then failed with a message saying so. The images of an attempt are saved by the server only when
  the attempt ends, so a lost attempt leaves none behind and no job is saved twice.

What the pool must provide is the `PoolWorker` protocol below; the Ray pool (backend/cluster) is one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from backend.core.errors import JobInterrupted, UserError
from backend.jobs.deferred_outputs import PendingWrite, perform_writes, with_saved_paths
from backend.jobs.outputs import OutputStore
from backend.jobs.queue import SERVER_STOPPED, Job, JobQueue

log = logging.getLogger(__name__)
SCALE_OUT_BACKLOG = 3  # waiting jobs for one checkpoint that justify loading it on another worker
NO_WORKERS = "no worker of the pool is running (each one failed to start; see the server log)"
WORKER_LOST = "the worker running this job stopped ({reason}); it was retried once on another worker and failed again"


class WorkerLost(Exception):
    """The worker's process ended (killed, out of host memory, node lost) while it ran a job."""


class RemoteUserError(UserError):
    """A user's mistake found by a worker (a bad value, a checkpoint that does not load), with its HTTP status."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(field, message)
        self.status = status


class RemoteInternalError(Exception):
    """Anything else that failed a job on a worker (its traceback is in the server's log); str() is the message
    for the user."""


@dataclass
class WorkerState:
    """What the Queue panel and GET /sdapi/v1/workers show of a worker."""
    id: str
    node: str = ""
    pid: int | None = None
    gpu: str | None = None
    state: str = "starting"  # starting | idle | busy | restarting | failed
    job: str | None = None
    models: list[str] = field(default_factory=list)  # checkpoint titles loaded, most recently used last
    jobs_done: int = 0
    model_loads: int = 0
    error: str | None = None  # why it failed to start

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "pid": self.pid, "gpu": self.gpu, "state": self.state,
                "job": self.job, "models": list(self.models), "jobs_done": self.jobs_done,
                "model_loads": self.model_loads, "error": self.error}


@dataclass
class WorkerResult:
    """A job's result as a worker made it: its image paths are placeholders until the server makes `writes`."""
    result: Any  # GenerationResult
    writes: list[PendingWrite]


class PoolWorker(Protocol):
    state: WorkerState

    def run(self, job: Job, checkpoint: str | None, options: Any) -> WorkerResult:
        """Run the job and return what it made, unsaved; keep job.progress
        current meanwhile and pass on its interrupt and skip requests. Raises WorkerLost when the process ends,
        RemoteUserError for a user's mistake, JobInterrupted, or another exception for an internal error."""

    def wait_until_back(self, timeout: float) -> bool:
        """After WorkerLost: True once the replacement process answers."""


class WorkerPool(Protocol):
    workers: list[PoolWorker]
    error: str | None  # why the pool could not start (then queued jobs fail with it)

    def start(self, on_change: Callable[[], None]):
        """Start the workers without blocking; call on_change() whenever one becomes ready."""

    def stop(self):
        """End the workers (the server is closing)."""


class PoolJobQueue(JobQueue):
    def __init__(self, pool: WorkerPool, checkpoint_of: Callable[[Any], str | None], options_of: Callable[[Any], Any],
                 outputs: OutputStore, history=None, **limits):
        """`checkpoint_of(request)`: the title of the checkpoint a job needs (None: none), asked while choosing where
        it starts; `options_of(request)`: the user options it runs with, asked when it starts; `outputs`: where the
        server saves what the workers made."""
        super().__init__(run_job=None, history=history, **limits)
        self._pool = pool
        self._outputs = outputs
        self._checkpoint_for = checkpoint_of
        self._options_of = options_of
        self._changed = threading.Condition(self._lock)
        self._running: dict[str, Job] = {}  # worker id -> its job

    # --- JobQueue's worker, replaced -------------------------------------------------------------------
    def start(self):
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._dispatch, name="job-dispatcher", daemon=True)
            self._thread.start()
        self._pool.start(on_change=self._notify)

    def stop(self, timeout: float = 30) -> bool:
        """As JobQueue.stop: the running jobs are asked to stop at their next step (the workers are told), and
        every unfinished job is recorded as interrupted; then the pool ends."""
        deadline = time.monotonic() + timeout
        super().stop(timeout)  # flags every unfinished job; queued ones are finished as interrupted
        self._notify()
        while time.monotonic() < deadline and any(not job.done for job in list(self._running.values())):
            time.sleep(0.05)
        with self._lock:
            left = [job for job in self._jobs.values() if not job.done]
        for job in left:
            job.status, job.error = "interrupted", job.error or SERVER_STOPPED
            self._finish(job)
        try:
            self._pool.stop()
        except Exception:
            log.exception("could not stop the worker pool")
        return not left

    def _enqueue(self, job: Job):
        self._changed.notify_all()

    def _ensure_worker(self, leaving=None):
        """The dispatcher is started by start(); submit only wakes it (in _enqueue)."""

    def _notify(self):
        with self._changed:
            self._changed.notify_all()

    def worker_states(self) -> list[WorkerState]:
        return [worker.state for worker in self._pool.workers]

    # --- which job next, on which worker -----------------------------------------------------------------
    def _dispatch(self):
        while True:
            with self._changed:
                while not self._stopping.is_set() and (pick := self._next_start()) is None:
                    self._changed.wait(timeout=1.0)
                if self._stopping.is_set():
                    return
                job, worker, checkpoint = pick
                # running from here on, under the lock, so that the next pick cannot take it again
                job.status, job.started_at, job.progress.started_at = "running", time.time(), time.monotonic()
                worker.state.state, worker.state.job, job.worker = "busy", job.id, worker.state.id
                if checkpoint is not None and checkpoint not in worker.state.models:
                    worker.state.models.append(checkpoint)  # it loads it now: the next job routes by that
                self._running[worker.state.id] = job
            threading.Thread(target=self._run_on, args=(job, worker, checkpoint), name=f"job-{job.id}",
                             daemon=True).start()

    def _next_start(self) -> tuple[Job, PoolWorker, str | None] | None:
        """(job, worker, checkpoint) to start now, or None (called with the lock held)."""
        queued = sorted((job for job in self._jobs.values() if job.status == "queued" and not job.done),
                        key=lambda job: job.sequence)
        if queued and self._no_worker_left():
            for job in queued:  # nothing will ever run them
                job.status, job.error, job.error_status = "failed", self._pool.error or NO_WORKERS, 503
                threading.Thread(target=self._finish, args=(job,), daemon=True).start()
            return None
        free = [worker for worker in self._pool.workers if worker.state.state == "idle"]
        if not queued or not free:
            return None
        live = [worker for worker in self._pool.workers if worker.state.state in ("idle", "busy", "restarting")]
        waiting_for: set[str | None] = set()  # checkpoints whose next job waits for a busy holder
        needs = {job.id: self._checkpoint_of(job) for job in queued}
        for job in queued:
            checkpoint = needs[job.id]
            if checkpoint in waiting_for and checkpoint is not None:
                continue
            candidates = [w for w in free if w.state.id != job.lost_on] or (
                free if not any(w.state.id != job.lost_on for w in live) else [])
            if not candidates:
                continue
            holders = [w for w in candidates if checkpoint is not None and checkpoint in w.state.models]
            if holders:
                return job, min(holders, key=self._load_of), checkpoint
            busy_holders = [w for w in live if w.state.state == "busy" and checkpoint in w.state.models]
            backlog = sum(1 for other in queued if needs[other.id] == checkpoint)
            if checkpoint is not None and busy_holders and backlog < SCALE_OUT_BACKLOG * len(busy_holders):
                waiting_for.add(checkpoint)
                continue
            return job, min(candidates, key=self._load_of), checkpoint
        return None

    def _no_worker_left(self) -> bool:
        """The pool could not start, or every worker failed for good."""
        workers = self._pool.workers
        if not workers:
            return self._pool.error is not None
        return all(worker.state.state == "failed" for worker in workers)

    def _checkpoint_of(self, job: Job) -> str | None:
        try:
            return self._checkpoint_for(job.request)
        except Exception:  # an unknown checkpoint: the worker reports it as the job's error
            return None

    def _load_of(self, worker: PoolWorker) -> tuple[int, int, str]:
        return len(worker.state.models), worker.state.jobs_done, worker.state.id

    # --- one job on one worker ---------------------------------------------------------------------------
    def _run_on(self, job: Job, worker: PoolWorker, checkpoint: str | None):
        lost = False
        try:
            if job.progress.interrupt_requested:  # interrupted while it waited: it never starts
                job.status = "interrupted"
                self._finish(job)
                return
            self._record(job)
            try:
                made = worker.run(job, checkpoint, self._options_of(job.request))
                job.result = with_saved_paths(made.result, perform_writes(self._outputs, made.writes))
                job.status = "interrupted" if getattr(job.result, "interrupted", False) else "done"
            except WorkerLost as error:
                lost = True
                self._lost(job, worker, error)
                return
            except JobInterrupted:
                job.status = "interrupted"
            except RemoteInternalError as error:
                job.status, job.error, job.error_status = "failed", str(error), 500
            except Exception as error:
                job.status = "failed"
                job.error, job.error_field, job.error_status = self._failure_message(job, error)
            self._finish(job)
        finally:
            with self._changed:
                self._running.pop(worker.state.id, None)
                if not lost:
                    worker.state.job = None
                    if worker.state.state == "busy":
                        worker.state.state = "idle"
                self._changed.notify_all()

    def _lost(self, job: Job, worker: PoolWorker, error: WorkerLost):
        log.warning("worker %s stopped while running job %s (%s)", worker.state.id, job.id, error)
        with self._changed:
            worker.state.state, worker.state.job, worker.state.models = "restarting", None, []
            retry = job.lost_on is None and not job.progress.interrupt_requested and not self._stopping.is_set()
            if retry:
                job.lost_on, job.status, job.worker = worker.state.id, "queued", None
                job.progress.restart()
        if retry:
            log.info("job %s goes back to the queue, to be retried once on another worker", job.id)
            self._record(job)
        else:
            job.status = "interrupted" if job.progress.interrupt_requested else "failed"
            if job.status == "failed":
                job.error, job.error_status = WORKER_LOST.format(reason=error), 500
            self._finish(job)
        threading.Thread(target=self._await_return, args=(worker,), daemon=True).start()

    def _await_return(self, worker: PoolWorker):
        """The pool restarts the process; the worker takes jobs again once it answers."""
        back = False
        while not back and not self._stopping.is_set():
            back = worker.wait_until_back(timeout=5.0)
        with self._changed:
            if back and worker.state.state == "restarting":
                worker.state.state = "idle"
            self._changed.notify_all()
