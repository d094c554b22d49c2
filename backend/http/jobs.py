"""Queueing a job for an API client and waiting for it: the HTTP side of the one job queue."""
from __future__ import annotations

from fastapi import HTTPException, Request

from backend.core.errors import UserError
from backend.jobs.queue import Job
from backend.services import Services

JOB_TIMEOUT_SECONDS = 24 * 3600


def submit_job(services: Services, request, http: Request, job_id: str | None = None) -> Job:
    """Queue a request for the client that sent it; the queue's refusals (too many jobs: 429, a force_task_id in
    use: 409) become their HTTP answers."""
    try:
        return services.jobs.submit(request, job_id=job_id, client=http.client.host if http.client else None)
    except UserError as error:
        raise HTTPException(status_code=error.status, detail=str(error)) from None


def finished_job_or_error(job: Job) -> Job:
    if not job.finished.wait(JOB_TIMEOUT_SECONDS):
        raise HTTPException(status_code=504, detail="the job did not finish in time")
    if job.status == "failed":
        raise HTTPException(status_code=job.error_status or 500, detail=job.error)
    return job



def job_for(services: Services, id_task: str | None) -> Job | None:
    """The job a client names (id_task = its force_task_id), or the running one as A1111 does."""
    if not id_task:
        return services.jobs.running()
    job = services.jobs.get(id_task)
    if job is None:
        raise HTTPException(status_code=404, detail=f"id_task: no job with id '{id_task}'")
    return job
