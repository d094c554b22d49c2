"""One pool worker: a Ray actor process that runs jobs the server sends it.

It builds its own model cache and generator from the server's Settings (models read from the same path; see
README "Scaling out"), loads the extensions' generation hooks, and runs one job at a time. It saves nothing: its
output store records the writes and the server makes them (backend/jobs/deferred_outputs.py). Progress, interrupt
and skip are calls the server makes while a job runs (the actor runs a few calls at once for that).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from backend.core.errors import JobInterrupted, UserError, is_out_of_memory
from backend.core.options import Options
from backend.core.settings import Settings
from backend.jobs.deferred_outputs import DeferredOutputStore, PendingWrite
from backend.jobs.queue import OUT_OF_MEMORY_ADVICE, JobProgress
from backend.services import apply_options, build_generation_services

log = logging.getLogger(__name__)


@dataclass
class JobFailure:
    """Why a job failed on the worker, as plain data (exceptions do not all survive pickling)."""
    message: str
    field: str | None = None
    status: int = 500
    user_error: bool = False
    details: str = ""  # the worker's traceback, for the server's log


@dataclass
class WorkerOutcome:
    result: Any = None  # GenerationResult, its paths placeholders until the server saves `writes`
    writes: list[PendingWrite] = field(default_factory=list)
    interrupted: bool = False  # JobInterrupted raised past the generator
    failure: JobFailure | None = None
    models: list[str] = field(default_factory=list)  # checkpoint titles loaded after the job
    model_loads: int = 0


class GenerationWorker:
    def __init__(self, settings: Settings, torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self._settings = settings
        self._options = Options()  # the server sends the options of each job with it
        self._outputs = DeferredOutputStore(settings.outputs_dir, options=lambda: self._options,
                                            folders_inside_root=settings.reachable_from_network)
        self._parts = build_generation_services(settings, lambda: self._options, self._outputs)
        from backend.models.loader import MODEL_LIBRARIES, import_model_libraries

        self._parts.construction.once(MODEL_LIBRARIES, import_model_libraries)
        self._current: tuple[str, JobProgress] | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: host name, process id and GPU (None on CPU)."""
        import torch

        device = self._parts.models.device
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        return {"node": socket.gethostname(), "pid": os.getpid(), "gpu": gpu, "models": self._models(),
                "model_loads": self._parts.models.stats.loads}

    def _models(self) -> list[str]:
        return self._parts.models.loaded_titles()

    def run_job(self, job_id: str, request, checkpoint: str | None, options: Options) -> WorkerOutcome:
        progress = JobProgress()
        with self._lock:
            self._current = (job_id, progress)
        self._options = options
        apply_options(options, self._settings, self._parts.models)
        self._outputs.take_writes()  # nothing of an earlier job is left
        try:
            if checkpoint is not None:
                self._choose(checkpoint)
            result = self._run_with_oom_retry(request, progress)
            return self._outcome(result=result, writes=self._outputs.take_writes())
        except JobInterrupted:
            return self._outcome(interrupted=True)
        except UserError as error:
            return self._outcome(failure=JobFailure(error.message, error.field, error.status, user_error=True))
        except Exception as error:
            if is_out_of_memory(error):
                return self._outcome(failure=JobFailure(
                    f"out of memory while generating; freed the model cache and retried once: {OUT_OF_MEMORY_ADVICE}",
                    status=422, user_error=True))
            log.exception("job %s failed", job_id)
            name = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            return self._outcome(failure=JobFailure(f"internal error: {name}", details=traceback.format_exc()))
        finally:
            self._outputs.take_writes()
            with self._lock:
                self._current = None

    def _choose(self, checkpoint: str):
        """The server's choice for this job; a file added since this worker listed the folder is found by a new
        scan (the server scans when asked to refresh, the workers when they meet a name they do not know)."""
        models = self._parts.models
        if models.registry.find(checkpoint) is None:
            models.refresh()
        models.choose(checkpoint)

    def _run_with_oom_retry(self, request, progress: JobProgress):
        try:
            return self._parts.run_attempt(request, progress)
        except Exception as error:
            if not is_out_of_memory(error) or progress.interrupt_requested:
                raise
            log.warning("out of memory (%s); freeing the model cache and retrying once", error)
        self._parts.free_caches()
        self._outputs.take_writes()  # the failed attempt's images are not saved
        progress.restart()
        return self._parts.run_attempt(request, progress)

    def _outcome(self, **fields) -> WorkerOutcome:
        return WorkerOutcome(models=self._models(), model_loads=self._parts.models.stats.loads, **fields)

    def _progress_of(self, job_id: str) -> JobProgress | None:
        with self._lock:
            current = self._current
        return current[1] if current is not None and current[0] == job_id else None

    def progress(self, job_id: str, preview_seen: int | None) -> dict[str, Any] | None:
        """The job's progress; the preview image only when it is not the one the server has (`preview_seen`, the
        token this call returned with it)."""
        progress = self._progress_of(job_id)
        if progress is None:
            return None
        preview = progress.preview
        token = id(preview) if preview is not None else None
        return {"step": progress.step, "steps_per_batch": progress.steps_per_batch, "batch": progress.batch,
                "batches": progress.batches, "part": progress.part, "parts": progress.parts,
                "preview": preview if token != preview_seen else None, "preview_token": token,
                "preview_step": progress.preview_step}

    def interrupt(self, job_id: str, keep_partial: bool = True) -> bool:
        progress = self._progress_of(job_id)
        if progress is None:
            return False
        progress.keep_partial = keep_partial
        progress.interrupt_requested = True
        return True

    def skip(self, job_id: str) -> bool:
        progress = self._progress_of(job_id)
        if progress is None:
            return False
        progress.skip_requested = True
        return True
