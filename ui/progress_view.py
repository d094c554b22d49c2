"""HTML for a job's progress bar, step count and time left, or its error."""
from __future__ import annotations

import html

from backend.jobs.pool_queue import WorkerState
from backend.jobs.queue import Job


def render_progress(job: Job, position: int | None = None) -> str:
    progress = job.progress
    if job.status == "queued":
        ahead = f" ({position} job(s) ahead)" if position else ""
        return f'<div class="job-status">Waiting in the queue{ahead}...</div>'
    percent = round(progress.fraction * 100)
    eta = progress.eta_seconds
    batch = f" · batch {progress.batch + 1}/{progress.batches}" if progress.batches > 1 else ""
    if progress.parts > 1:  # img2img Batch: which input image of the folder
        batch += f" · image {progress.part + 1}/{progress.parts}"
    eta_text = f" · {eta:.1f}s left" if eta is not None else ""
    label = f"Step {progress.step}/{progress.steps_per_batch or '?'}{batch}{eta_text}"
    return (f'<div class="job-progress" style="border:1px solid #888;border-radius:4px;position:relative;height:22px">'
            f'<div style="width:{percent}%;height:100%;background:#f97316"></div>'
            f'<span class="job-progress-text" style="position:absolute;left:8px;top:2px">{label} ({percent}%)</span>'
            '</div>')


def render_error(message: str) -> str:
    return f'<div class="job-error" style="color:#dc2626;font-weight:600">Error: {html.escape(message)}</div>'


def render_done(job: Job, seconds: float) -> str:
    count = len(job.result.images) if job.result else 0
    word = "Interrupted" if job.status == "interrupted" else "Done"
    done = f'<div class="job-done">{word}: {count} image(s) in {seconds:.1f}s</div>'
    warnings = job.result.warnings if job.result else []
    if not warnings:
        return done
    items = "".join(f"<li>{html.escape(warning)}</li>" for warning in warnings)
    return done + f'<ul class="job-warnings" style="color:#b45309">{items}</ul>'


def render_queue(jobs: list[Job], workers: list[WorkerState] | None = None) -> str:
    """The queue panel: running and waiting jobs, oldest first; then the workers that run them."""
    shown = render_workers(workers) if workers else ""
    if not jobs:
        return '<div class="queue-empty">The queue is empty.</div>' + shown
    rows = []
    for place, job in enumerate(jobs):
        prompt = html.escape(getattr(job.request, "prompt", "")[:60]) or "<i>(empty prompt)</i>"
        state = (f"running, {round(job.progress.fraction * 100)}%" if job.status == "running"
                 else f"waiting, #{place}")
        rows.append(f"<tr><td>{html.escape(job.id)}</td><td>{type(job.request).__name__.removesuffix('Request')}"
                    f"</td><td>{prompt}</td><td>{state}</td></tr>")
    return ('<table class="queue-table"><tr><th>Job</th><th>Kind</th><th>Prompt</th><th>State</th></tr>'
            + "".join(rows) + "</table>" + shown)


def render_workers(workers: list[WorkerState]) -> str:
    """Which worker runs what: its state and job, the checkpoints it holds, jobs done and model loads."""
    rows = []
    for worker in workers:
        where = html.escape(" · ".join(str(part) for part in (worker.node, worker.gpu or "CPU",
                                                               worker.pid and f"pid {worker.pid}") if part))
        state = html.escape(worker.state + (f" ({worker.job})" if worker.job else "")
                            + (f": {worker.error}" if worker.error else ""))
        models = html.escape(", ".join(worker.models)) or "<i>none</i>"
        rows.append(f"<tr><td>{html.escape(worker.id)}</td><td>{where}</td><td>{state}</td><td>{models}</td>"
                    f"<td>{worker.jobs_done}</td><td>{worker.model_loads}</td></tr>")
    return ('<table class="workers-table"><tr><th>Worker</th><th>Where</th><th>State</th><th>Models loaded</th>'
            "<th>Jobs done</th><th>Model loads</th></tr>" + "".join(rows) + "</table>")
