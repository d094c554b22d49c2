"""A tab's Generate clicked again while its job runs: the new job is queued, never dropped, and the tab shows each
of its jobs in turn.

Gradio runs each click as an event; only the first of a browser session's clicks in a tab (the one whose event
is running) draws the tab's progress, preview and results, for its own job and then for every job queued from
the tab meanwhile, in order. A later click queues its job, appends it to the tab's list and ends at once; the
running event says that it is queued ("queued (position N)") until its turn comes.
"""
from __future__ import annotations

import html
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from backend.jobs.queue import Job


@dataclass
class _TabState:
    owner: object  # the token of the event that shows this session's jobs
    waiting: deque = field(default_factory=deque)  # jobs queued from the tab, not shown yet
    notes: list[str] = field(default_factory=list)  # HTML lines kept under the progress (errors of later clicks)


class TabJobs:
    """One per tab; state per browser session (Gradio's session hash)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sessions: dict[str, _TabState] = {}

    def add(self, session: str, job: Job) -> object | None:
        """Queue `job` for the tab in this session. Returns a token when the caller's event must show the tab's
        jobs (none was being shown), else None: the event already showing them will show this one."""
        with self._lock:
            state = self._sessions.get(session)
            if state is not None:
                state.waiting.append(job)
                return None
            token = object()
            self._sessions[session] = _TabState(owner=token, waiting=deque([job]))
            return token

    def note(self, session: str, line: str) -> bool:
        """Show `line` (HTML) with the tab's running job; False when no event is showing the tab's jobs."""
        with self._lock:
            state = self._sessions.get(session)
            if state is None:
                return False
            state.notes.append(line)
            return True

    def next(self, session: str, token: object) -> Job | None:
        """The next job to show, or None: then the session's tab is free and the next click shows its own."""
        with self._lock:
            state = self._sessions.get(session)
            if state is None or state.owner is not token:
                return None
            if state.waiting:
                return state.waiting.popleft()
            del self._sessions[session]
            return None

    def waiting(self, session: str) -> list[Job]:
        with self._lock:
            state = self._sessions.get(session)
            return list(state.waiting) if state else []

    def notes(self, session: str) -> str:
        with self._lock:
            state = self._sessions.get(session)
            return "".join(state.notes) if state else ""

    def release(self, session: str, token: object):
        """The showing event ended (finished, or the page went away): forget the session's tab state. Its jobs
        stay in the queue and run; their images are in the History tab."""
        with self._lock:
            state = self._sessions.get(session)
            if state is not None and state.owner is token:
                del self._sessions[session]

    def show_all(self, session: str, token: object, show: Callable[[Job], Iterator[dict]]) -> Iterator[dict]:
        """Yield the updates of `show(job)` for each job of the tab in turn."""
        try:
            while (job := self.next(session, token)) is not None:
                yield from show(job)
        finally:
            self.release(session, token)


def render_queued(jobs: list[Job], position: Callable[[Job], int | None]) -> str:
    """The line under a tab's progress naming the jobs queued from it: "queued (position N)"."""
    if not jobs:
        return ""
    places = ", ".join(f"position {place + 1}" if (place := position(job)) is not None else "starting"
                       for job in jobs)
    noun = "job" if len(jobs) == 1 else "jobs"
    return (f'<div class="tab-queued">{len(jobs)} more {noun} from this tab queued ({html.escape(places)}); '
            "each result is shown when it is done</div>")
