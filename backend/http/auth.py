"""HTTP Basic on the API routers themselves (the app's guard checks the same credentials in front of them)."""
from __future__ import annotations

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from backend.http.security import credentials_match


def basic_auth(pairs: list[tuple[str, str]] | None):
    """HTTP Basic for the API when credentials are given (the app's guard checks the same; this keeps the router
    safe on its own, as tests and other hosts mount it)."""
    if not pairs:
        return []
    security = HTTPBasic()

    def check(credentials: HTTPBasicCredentials = Depends(security)):
        if credentials_match((credentials.username, credentials.password), tuple(pairs)):
            return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]
