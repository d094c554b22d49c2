"""The one error model. A `UserError` is something the user can fix (a request field out of range, an unknown
model, a file that cannot be used, a full disk, too many jobs); its message is for them, `field` names what it is
about, and `status` is the HTTP answer (4xx). Every other exception is internal: the job fails with "internal
error", the traceback is logged and the API answers 5xx. The queue and the HTTP layer decide by type alone.

Also here: the signals a running job receives (interrupt, skip) and recognising out-of-memory errors, so that
no layer imports another only to reach an exception class. Imports no torch.
"""
from __future__ import annotations

import sys


class UserError(ValueError):
    """A mistake the user can fix. str() is "field: message" when a field is named, else the message.
    (A ValueError too, for the callers of the classes that were ValueErrors before this model existed.)"""

    status = 422

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TooManyJobs(UserError):
    """A client has as many unfinished jobs as it may queue."""

    status = 429

    def __init__(self, message: str):
        super().__init__(None, message)


class DuplicateJobId(UserError):
    """A client chose a job id (A1111's force_task_id) that a job has already."""

    status = 409

    def __init__(self, job_id: str):
        super().__init__("force_task_id", f"a job with id '{job_id}' already exists")


class JobInterrupted(Exception):
    """Raised inside a job when its own interrupt flag is set."""


class BatchSkipped(Exception):
    """Raised inside a job when the user asks to skip the batch being generated."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or the plain RuntimeError that older torch versions and MPS raise. (torch is only
    looked up: an error from it means it is imported already.)"""
    torch = sys.modules.get("torch")
    out_of_memory = getattr(torch, "OutOfMemoryError", None)
    return (out_of_memory is not None and isinstance(error, out_of_memory)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
