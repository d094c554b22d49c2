"""One ASGI middleware in front of every route (web UI, REST API, file routes, extension routes):
authentication, login throttling, path checks, file-route confinement, cross-origin refusal and a body
size limit. Each check is a small function so the rules can be read (and tested) one by one.

Gradio's own checks stay in place behind it; this layer is what the project promises, whatever a Gradio
release does (Gradio serves some routes without auth and allows any origin on a non-localhost host).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

# Served to anyone: the login page and the front-end code it needs (no data, no files of the user's).
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/static/", "/gradio_api/svelte/", "/pwa_icon")
PUBLIC_PATHS = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/robots.txt", "/manifest.json", "/theme.css",
                "/gradio_api/theme.css", "/login_check", "/login_check/", "/gradio_api/login_check",
                "/gradio_api/login_check/", "/config", "/config/", "/gradio_api/startup-events"}
API_PREFIXES = ("/sdapi/", "/extensions/", "/docs", "/redoc", "/openapi.json")
FILE_ROUTE_PREFIXES = ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/file/")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
LOGIN_PATHS = {"/login", "/login/"}


@dataclass(frozen=True)
class HttpPolicy:
    """What the middleware enforces; built once by app.py from the flags."""
    ui_credentials: tuple[tuple[str, str], ...] = ()  # empty: the web UI is open
    api_credentials: tuple[tuple[str, str], ...] = ()  # empty: the REST API is open
    allowed_origins: tuple[str, ...] = ()  # other sites allowed to call us from a browser (--cors-allow-origins)
    file_roots: tuple[Path, ...] = ()  # the only folders file routes may serve (outputs, the upload cache)
    max_body_bytes: int = 64 * 2**20
    login_failures_allowed: int = 10  # per client address within the window; then 429 until it has passed
    login_window_seconds: float = 60.0


@dataclass
class LoginThrottle:
    """Failed logins per client address in a sliding window (the only state; one per server)."""
    failures_allowed: int
    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(client)
            if len(recent) < self.failures_allowed:
                return 0.0
            return max(0.0, recent[0] + self.window_seconds - self.clock())

    def failed(self, client: str):
        with self._lock:
            self._recent(client).append(self.clock())

    def succeeded(self, client: str):
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str) -> deque:
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] <= self.clock() - self.window_seconds:
            recent.popleft()
        return recent


def suspicious_path(raw_path: str) -> bool:
    """`..` segments, backslashes (Windows paths) or NUL, also when percent-encoded once or twice."""
    text = raw_path
    for _ in range(3):
        if "\\" in text or "\x00" in text or ".." in text.replace("\\", "/").split("/"):
            return True
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return True  # encoded more than twice: no client of ours does that


def file_route_target(path: str) -> str | None:
    """The file path a Gradio file route asks for, or None when `path` is not a file route."""
    for prefix in FILE_ROUTE_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


def inside_roots(target: str, roots: tuple[Path, ...]) -> bool:
    """True when `target` (symlinks resolved) lies inside one of `roots`; URLs are never local files."""
    if "://" in target or target.startswith("//"):
        return False
    resolved = Path(os.path.realpath(target))
    return any(resolved.is_relative_to(os.path.realpath(root)) for root in roots)


def same_origin(origin: str, headers: dict[str, str]) -> bool:
    """The Origin names the host the request was sent to (directly, or through a proxy that says so)."""
    if origin == "null":
        return False
    origin_host = urlsplit(origin).netloc.lower()
    hosts = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").lower()} - {""}
    return origin_host in hosts


def basic_credentials(headers: dict[str, str]) -> tuple[str, str] | None:
    value = headers.get("authorization", "")
    if not value.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(value[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return user, password


def credentials_match(given: tuple[str, str] | None, allowed: tuple[tuple[str, str], ...]) -> bool:
    if given is None:
        return False
    found = False
    for user, password in allowed:  # compare every pair in constant time: no early exit leaks which matched
        found |= secrets.compare_digest(given[0].encode(), user.encode()) & \
            secrets.compare_digest(given[1].encode(), password.encode())
    return found


def gradio_session_user(app, cookies: dict[str, str]) -> str | None:
    """The user a Gradio login cookie belongs to (Gradio keeps tokens on its app object)."""
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if not tokens or cookie_id is None:
        return None
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


def parse_cookies(header: str) -> dict[str, str]:
    cookies = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return cookies


class HttpSecurityMiddleware:
    def __init__(self, app, policy: HttpPolicy):
        self.app = app
        self.policy = policy
        self.throttle = LoginThrottle(policy.login_failures_allowed, policy.login_window_seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            return await self._refuse(scope, receive, send, *refusal)
        client = (scope.get("client") or ("unknown",))[0]
        if self._is_login_attempt(scope, headers):
            send = self._watch_login(send, client, login_form=scope["path"] in LOGIN_PATHS)
        await self._serve_limited(scope, receive, send)

    async def _serve_limited(self, scope, receive, send):
        """Pass the request on, counting body bytes as they arrive (chunked bodies have no Content-Length):
        past the limit, the client gets 413 and the app sees a disconnect; whatever it answers is dropped."""
        limit, received = self.policy.max_body_bytes, 0
        state = {"started": False, "refused": False}

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                received += len(message.get("body", b""))
                if received > limit:
                    if not state["started"]:
                        await self._refuse(scope, receive, send, 413,
                                           f"request body larger than the limit of {limit:,} bytes", {})
                    state["refused"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            if state["refused"]:
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not state["refused"]:  # the app's complaint about the cut-off body is expected; others are not
                raise

    def refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        """(status, message, extra headers) when the request must not reach the app, else None."""
        path, method = scope["path"], scope.get("method", "GET")
        raw_path = scope.get("raw_path", b"").decode("latin-1") or path
        if suspicious_path(raw_path) or suspicious_path(path):
            return 404, "Not found", {}
        origin = headers.get("origin")
        unsafe = method in UNSAFE_METHODS or scope["type"] == "websocket"
        if origin and unsafe and origin not in self.policy.allowed_origins and not same_origin(origin, headers):
            return 403, f"cross-origin request from {origin} refused (see --cors-allow-origins)", {}
        declared = headers.get("content-length", "0").strip() or "0"
        if not declared.isdigit():
            return 400, "Content-Length is not a number", {}
        if int(declared) > self.policy.max_body_bytes:
            return 413, f"request body larger than the limit of {self.policy.max_body_bytes:,} bytes", {}
        client = (scope.get("client") or ("unknown",))[0]
        if self._is_login_attempt(scope, headers):
            wait = self.throttle.retry_after(client)
            if wait > 0:
                return 429, f"too many failed logins; try again in {wait:.0f} s", {"retry-after": f"{wait:.0f}"}
        denied = self._authentication_refusal(scope, path, headers)
        if denied is not None:
            return denied
        target = file_route_target(path)
        if target is not None and not inside_roots(unquote(target), self.policy.file_roots):
            return 403, "Forbidden: only generated images and uploads are served", {}
        return None

    def _authentication_refusal(self, scope, path: str, headers: dict[str, str]):
        if path.startswith(API_PREFIXES):
            allowed = self.policy.api_credentials
            if allowed and not credentials_match(basic_credentials(headers), allowed):
                return 401, "Not authenticated", {"www-authenticate": "Basic"}
            return None
        allowed = self.policy.ui_credentials
        if not allowed or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        cookies = parse_cookies(headers.get("cookie", ""))
        if gradio_session_user(scope.get("app"), cookies) or credentials_match(basic_credentials(headers), allowed):
            return None
        return 401, "Not authenticated", {}

    def _is_login_attempt(self, scope, headers: dict[str, str]) -> bool:
        return (scope["path"] in LOGIN_PATHS and scope.get("method") == "POST") or "authorization" in headers

    def _watch_login(self, send, client: str, login_form: bool):
        """Count the answer: a refused login (Gradio's form: 400, HTTP Basic: 401) is a failure, a 2xx a
        success."""
        refused = (400, 401) if login_form else (401,)

        async def watched(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                if status in refused:
                    self.throttle.failed(client)
                    log.warning("failed login from %s", client)
                elif status < 300:
                    self.throttle.succeeded(client)
            await send(message)
        return watched

    async def _refuse(self, scope, receive, send, status: int, message: str, extra_headers: dict):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
