"""The server's side of the Ray worker pool: it starts (or joins) a Ray runtime, starts the worker actors, and
runs each job on one of them for PoolJobQueue (backend/jobs/pool_queue.py), relaying progress, previews, interrupt
and skip by job id, and handing back what the worker made (the queue saves it with the server's OutputStore).

Ray is imported only here and only when a pool is asked for (--workers, --ray-address). Ray's processes listen on
every interface (Ray has no loopback-only mode), so the local runtime always requires Ray's token (its file is made
readable by this user only) and starts no dashboard unless asked (then on 127.0.0.1); a cluster joined with
--ray-address must run on a private network, as Ray's security advice says.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backend.core.errors import JobInterrupted
from backend.core.settings import Settings
from backend.jobs.pool_queue import RemoteInternalError, RemoteUserError, WorkerLost, WorkerResult, WorkerState
from backend.jobs.queue import Job

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # the code the workers import (the same path on every node)
POLL_SECONDS = 0.2  # how often a running job's progress is fetched (and interrupt/skip passed on)
PROGRESS_TIMEOUT_SECONDS = 10.0
RAY_NAMESPACE = "sd-webui"


@dataclass(frozen=True)
class PoolPlan:
    """How many workers, where: from --workers / --ray-address / --worker-threads / --ray-dashboard."""
    workers: int | None  # None: 'auto' (one per GPU, else 1)
    address: str | None = None  # an existing cluster; None: a local runtime
    torch_threads: int | None = None  # per worker; None: the CPU cores / workers
    dashboard: bool = False


class RayWorker:
    """One worker actor as PoolJobQueue sees it."""

    def __init__(self, actor, worker_id: str):
        self.state = WorkerState(id=worker_id)
        self.actor = actor

    def describe(self, timeout: float) -> bool:
        """Ask the process who it is; True when it answered within `timeout` seconds. An actor Ray gave up on
        (its start failed: a broken install, no GPU left) is marked failed, with the reason."""
        import ray
        from ray.exceptions import ActorDiedError

        try:
            facts = ray.get(self.actor.describe.remote(), timeout=timeout)
        except ActorDiedError as error:
            self.state.state, self.state.error = "failed", _first_line(error)
            return False
        except Exception:  # not answering yet: starting or restarting
            return False
        self.state.node, self.state.pid, self.state.gpu = facts["node"], facts["pid"], facts["gpu"]
        self.state.models, self.state.model_loads = facts["models"], facts["model_loads"]
        return True

    def wait_until_back(self, timeout: float) -> bool:
        started = time.monotonic()
        if self.describe(timeout) or self.state.state == "failed":
            return True
        time.sleep(max(0.0, min(1.0, timeout - (time.monotonic() - started))))  # the actor is still restarting
        return False

    def run(self, job: Job, checkpoint: str | None, options) -> WorkerResult:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        reference = self.actor.run_job.remote(job.id, job.request, checkpoint, options)
        relay = _ProgressRelay(job)
        try:
            while not ray.wait([reference], timeout=POLL_SECONDS)[0]:
                relay.pass_requests(self.actor)
                try:
                    relay.apply(ray.get(self.actor.progress.remote(job.id, relay.preview_token),
                                        timeout=PROGRESS_TIMEOUT_SECONDS))
                except GetTimeoutError:
                    continue
            outcome = ray.get(reference)
        except RayActorError as error:
            raise WorkerLost(_first_line(error)) from None
        self.state.models, self.state.model_loads = outcome.models, outcome.model_loads
        self.state.jobs_done += 1
        if outcome.failure is not None:
            failure = outcome.failure
            if failure.user_error:
                raise RemoteUserError(failure.field, failure.message, failure.status)
            log.error("job %s failed on %s:\n%s", job.id, self.state.id, failure.details)
            raise RemoteInternalError(failure.message)
        if outcome.interrupted:
            raise JobInterrupted()
        return WorkerResult(outcome.result, outcome.writes)


class _ProgressRelay:
    """Copies a worker's progress into the server's JobProgress, and the server's requests to the worker."""

    def __init__(self, job: Job):
        self.job = job
        self.preview_token: int | None = None
        self._interrupt_sent = False

    def pass_requests(self, actor):
        progress = self.job.progress
        if progress.interrupt_requested and not self._interrupt_sent:
            actor.interrupt.remote(self.job.id, progress.keep_partial)
            self._interrupt_sent = True
        if progress.skip_requested:
            progress.skip_requested = False
            actor.skip.remote(self.job.id)

    def apply(self, snapshot: dict | None):
        if snapshot is None:  # not started on the worker yet
            return
        progress = self.job.progress
        before = progress.steps_done
        for name in ("steps_per_batch", "batch", "batches", "part", "parts", "step"):
            setattr(progress, name, snapshot[name])
        if snapshot["preview"] is not None:
            progress.preview, progress.preview_step = snapshot["preview"], snapshot["preview_step"]
        self.preview_token = snapshot["preview_token"]
        if progress.steps_done != before:
            progress.note_step()


class RayWorkerPool:
    def __init__(self, settings: Settings, plan: PoolPlan):
        self.settings = settings
        self.plan = plan
        self.workers: list[RayWorker] = []
        self.error: str | None = None  # why the pool could not start
        self.started = threading.Event()
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_change):
        self._thread = threading.Thread(target=self._run, args=(on_change,), name="ray-pool", daemon=True)
        self._thread.start()

    def _run(self, on_change):
        """Starts the runtime and the workers, then stays until stop(): Ray's own processes (GCS, raylet) are
        started with a parent-death signal, which Linux sends when the *thread* that started them ends."""
        connected = False
        try:
            count, gpus_each = self._connect()
            connected = True
            self._start_workers(count, gpus_each, on_change)
        except Exception as error:
            self.error = f"the worker pool could not start: {_first_line(error)}"
            log.exception(self.error)
        finally:
            self.started.set()
            on_change()
        self._stop_requested.wait()
        if connected:
            self._disconnect()

    def _connect(self) -> tuple[int, float]:
        """Start or join the Ray runtime; returns (workers to start, GPUs for each)."""
        # Ray's C++ core would print a stack dump on every SIGTERM, before our clean stop; the stop is ours to do
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        if not self.plan.address or _auth_token_present():
            # Ray's processes listen on every interface (it has no loopback-only mode), so our local runtime always
            # requires Ray's token; a cluster from `ray start` wants its token too, which Ray sends only in token
            # mode (read when ray is imported). The operator's RAY_AUTH_MODE wins.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        import ray

        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                 os.environ.get("PYTHONPATH")]))}}
        if self.plan.address:
            ray.init(address=self.plan.address, namespace=RAY_NAMESPACE, runtime_env=runtime_env,
                     configure_logging=False, log_to_driver=True)
            gpus = int(ray.cluster_resources().get("GPU", 0))
            count = gpus or (self.plan.workers or 1)
            if self.plan.workers:
                count = min(count, self.plan.workers)
        else:
            gpus = _visible_gpus() if self.settings.device in ("auto", "cuda") else 0
            count = self.plan.workers or max(gpus, 1)
            ray.init(address="local", num_cpus=max(count, os.cpu_count() or 1), num_gpus=gpus, namespace=RAY_NAMESPACE,
                     include_dashboard=self.plan.dashboard, dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", runtime_env=runtime_env, configure_logging=False,
                     log_to_driver=True)
            _keep_token_private()
        log.info("Ray runtime %s: starting %d worker(s)%s", self.plan.address or "(local)", count,
                 f" on {gpus} GPU(s)" if gpus else " on the CPU")
        return count, 1.0 if gpus >= count and gpus else (gpus / count if gpus else 0.0)

    def _start_workers(self, count: int, gpus_each: float, on_change):
        import ray

        from backend.cluster.worker import GenerationWorker

        threads = self.plan.torch_threads or max(1, (os.cpu_count() or 1) // count)
        actor_class = ray.remote(GenerationWorker).options(
            max_restarts=-1, max_task_retries=0, max_concurrency=4, num_cpus=1 if not gpus_each else 0,
            num_gpus=gpus_each)
        for index in range(count):
            actor = actor_class.remote(self.settings, threads)
            self.workers.append(RayWorker(actor, f"worker-{index}"))
        on_change()
        waiting = list(self.workers)
        while waiting and not self._stop_requested.is_set():
            for worker in list(waiting):
                if worker.state.state == "failed":
                    waiting.remove(worker)
                    log.error("%s could not start: %s", worker.state.id, worker.state.error)
                    on_change()
                elif worker.describe(timeout=1.0):
                    worker.state.state = "idle"
                    waiting.remove(worker)
                    log.info("%s ready on %s (pid %s%s)", worker.state.id, worker.state.node, worker.state.pid,
                             f", {worker.state.gpu}" if worker.state.gpu else "")
                    on_change()

    def _disconnect(self):
        """End our workers; a local runtime ends with us, a cluster goes on without us."""
        import ray

        for worker in self.workers:
            try:
                ray.kill(worker.actor)
            except Exception as error:  # already gone
                log.debug("could not end %s: %s", worker.state.id, error)
        ray.shutdown()

    def stop(self, timeout: float = 30):
        self._stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _auth_token_present() -> bool:
    """Ray's cluster token where Ray looks for it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def _keep_token_private():
    """Ray writes its token file readable by every local user; only this user needs it."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if path.is_file() and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    except OSError as error:
        log.warning("could not make %s private: %s", path, error)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
