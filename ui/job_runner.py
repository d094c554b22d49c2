"""The one way a tab runs a job: submit the request its form built, then follow the job (queue position,
progress, preview) to its result, and show the jobs queued from the tab meanwhile (ui/tab_jobs.py). The txt2img,
img2img and Upscale tabs differ only in what they show at each moment (`JobView`)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from backend.core.errors import UserError
from backend.core.requests import JobRequest
from backend.jobs.queue import Job
from backend.services import Services
from ui.progress_view import render_done, render_error, render_progress
from ui.tab_jobs import TabJobs, render_queued

POLL_SECONDS = 0.25


def client_address(http: gr.Request | None) -> str | None:
    """The address an event came from (jobs are limited per address)."""
    return http.client.host if http is not None and http.client else None


def _nothing(job: Job) -> dict:
    return {}


@dataclass
class JobView:
    """What a tab shows besides the progress line: each callback returns {component: value}."""
    progress: gr.components.Component
    started: Callable[[Job], dict] = _nothing  # once, when the tab starts showing the job
    running: Callable[[Job], dict] = _nothing  # at each poll (a new preview, say)
    failed: Callable[[Job], dict] = _nothing
    finished: Callable[[Job], dict] = _nothing  # the result: gallery, infotext ...


class TabJobRunner:
    """One per tab."""

    def __init__(self, services: Services, view: JobView):
        self.services = services
        self.view = view
        self.tab_jobs = TabJobs()

    def run(self, build: Callable[[], JobRequest], http: gr.Request) -> Iterator[dict]:
        """Submit the request `build` returns (a UserError or an unreadable file is shown under the progress) and
        yield the tab's updates until its jobs are shown."""
        session = http.session_hash or ""
        try:
            job = self.services.jobs.submit(build(), client=client_address(http))
        except (UserError, OSError) as error:
            if not self.tab_jobs.note(session, render_error(str(error))):  # a job runs: say it under its progress
                yield {self.view.progress: render_error(str(error))}
            return
        token = self.tab_jobs.add(session, job)
        if token is not None:  # else the event showing this tab's jobs shows this one too, when its turn comes
            yield from self.tab_jobs.show_all(session, token, lambda job: self._follow(job, session))

    def _queued(self, session: str) -> str:
        return self.tab_jobs.notes(session) + render_queued(self.tab_jobs.waiting(session), self.services.jobs.position)

    def _progress(self, job: Job, session: str) -> str:
        return render_progress(job, self.services.jobs.position(job)) + self._queued(session)

    def _follow(self, job: Job, session: str) -> Iterator[dict]:
        view = self.view
        yield {view.progress: self._progress(job, session), **view.started(job)}
        while not job.finished.wait(POLL_SECONDS):
            yield {view.progress: self._progress(job, session), **view.running(job)}
        if job.status == "failed":
            yield {view.progress: render_error(job.error) + self._queued(session), **view.failed(job)}
            return
        yield {view.progress: render_done(job, job.finished_at - job.created_at) + self._queued(session),
               **view.finished(job)}
