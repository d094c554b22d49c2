"""Refusing JSON bodies no answer can be written about (NaN, Infinity, lone surrogates) with a 422."""
from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException, Request


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": JSON can escape one, but it is not text
        return False
    return True


def _json_value_problem(value: Any, where: str) -> str | None:
    """Invalid to answer about: NaN/Infinity (Python's json reads them, but no response or error message holding
    one can be written back) and lone surrogates (they cannot be encoded). Walked with a stack: bodies can nest."""
    pending = [(value, where)]
    while pending:
        value, where = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where or 'body'}: must be a finite number; got {value}"
        if isinstance(value, str) and not _is_text(value):
            return f"{where or 'body'}: not valid Unicode text (it holds a lone surrogate): {value[:40]!r}"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    return f"{where or 'body'}: the key {key[:40]!r} is not valid Unicode text"
                pending.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
    return None


async def refuse_unanswerable_json(request: Request):
    """A dependency of every API route (after the credentials): a JSON body holding NaN, Infinity or a lone
    surrogate gets a 422 naming the field. Left alone, such a value ends in a 500 when an answer or an error
    message echoing it is encoded."""
    if not await request.body():
        return
    try:
        body = await request.json()  # FastAPI has read and parsed it already; this is its cached copy
    except (ValueError, RecursionError):
        return  # not JSON: FastAPI answers that itself
    problem = _json_value_problem(body, "")
    if problem:
        raise HTTPException(status_code=422, detail=problem)
