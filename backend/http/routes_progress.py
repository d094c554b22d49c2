"""/sdapi/v1 progress, interrupt and skip: watching and steering queued jobs."""
from __future__ import annotations

import datetime

from fastapi import APIRouter, Query

from backend.http.a1111 import png_base64
from backend.http.bodies import ProgressResponse
from backend.http.jobs import job_for
from backend.services import Services


def add_progress_routes(api: APIRouter, services: Services):
    @api.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False, id_task: str | None = Query(None)):
        job = job_for(services, id_task)
        if job is None:
            return ProgressResponse(progress=0, eta_relative=0, current_image=None, textinfo=None, state={
                "skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                "job_no": 0, "sampling_step": 0, "sampling_steps": 0})
        p = job.progress
        fraction = 1.0 if job.done else p.fraction
        preview = p.preview if (p.preview is not None and not skip_current_image) else None
        return ProgressResponse(
            progress=fraction, eta_relative=0.0 if job.done else (p.eta_seconds or 0.0),
            current_image=png_base64(preview) if preview is not None else None,
            textinfo=job.error, current_task=job.id, queue_position=services.jobs.position(job), status=job.status,
            state={"skipped": p.skip_requested, "interrupted": p.interrupt_requested, "job": job.id,
                   "job_count": len(services.jobs.pending()),
                   "job_timestamp": datetime.datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
                   "job_no": p.part * p.batches + p.batch,  # img2img Batch: counted over all its images
                   "sampling_step": p.step, "sampling_steps": p.steps_per_batch})

    @api.post("/interrupt")
    def interrupt(id_task: str | None = Query(None)):
        """Interrupt the given job (id_task), or the running job as A1111 does."""
        job = job_for(services, id_task)
        return {"interrupted": bool(job and services.jobs.interrupt(job.id)), "task_id": job and job.id}

    @api.post("/skip")
    def skip(id_task: str | None = Query(None)):
        job = job_for(services, id_task)
        return {"skipped": bool(job and services.jobs.skip(job.id)), "task_id": job and job.id}

    @api.get("/workers")
    def workers():
        """What runs jobs: one entry per pool worker (--workers, --ray-address), or the one in-process worker."""
        return [state.as_dict() for state in services.worker_states()]
