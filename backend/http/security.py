"""One ASGI middleware in front of every route (web UI, REST API, file routes, extension routes): the Host
allow-list (DNS rebinding), authentication, login throttling, path checks, file-route confinement, cross-origin
refusal, a body size limit and the security headers of every answer. Each check is a small function so the
rules can be read (and tested) one by one.

Gradio's own checks stay in place behind it; this layer is what the project promises, whatever a Gradio
release does (Gradio serves some routes without auth and allows any origin on a non-localhost host).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from backend.http.allowed_hosts import host_allowed
from backend.http.upload_folder import prune_folder

log = logging.getLogger(__name__)

# Served to anyone: the login page and the front-end code it needs (no data, no files of the user's).
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/static/", "/gradio_api/svelte/", "/pwa_icon")
PUBLIC_PATHS = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/robots.txt", "/manifest.json", "/theme.css",
                "/gradio_api/theme.css", "/login_check", "/login_check/", "/gradio_api/login_check",
                "/gradio_api/login_check/", "/config", "/config/", "/gradio_api/startup-events"}
API_PREFIXES = ("/sdapi/", "/extensions/", "/controlnet/", "/docs", "/redoc", "/openapi.json")
FILE_ROUTE_PREFIXES = ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/file/")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
LOGIN_PATHS = {"/login", "/login/"}
LOGOUT_PATHS = {"/logout", "/logout/"}
UPLOAD_PATHS = {"/gradio_api/upload", "/upload"}
# What the outputs folder may serve: images (not history.sqlite3, not partial files being written).
SERVED_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Sent with every answer: no other site may frame the UI (clickjacking), no browser may guess content types.
SECURITY_HEADERS = {"x-frame-options": "DENY", "content-security-policy": "frame-ancestors 'none'",
                    "x-content-type-options": "nosniff"}


@dataclass(frozen=True)
class HttpPolicy:
    """What the middleware enforces; built once by app.py from the flags."""
    ui_credentials: tuple[tuple[str, str], ...] = ()  # empty: the web UI is open
    api_credentials: tuple[tuple[str, str], ...] = ()  # empty: the REST API is open
    allowed_origins: tuple[str, ...] = ()  # other sites allowed to call us from a browser (--cors-allow-origins)
    file_roots: tuple[Path, ...] = ()  # the only folders file routes may serve (outputs, the upload cache)
    image_only_roots: tuple[Path, ...] = ()  # of those, the ones that serve only image files (outputs)
    max_body_bytes: int = 64 * 2**20
    login_failures_allowed: int = 10  # per client address within the window; then 429 until it has passed
    login_window_seconds: float = 60.0
    # Host names besides loopback (--allowed-hosts, this machine's names with --listen, the share tunnel's host);
    # "*.example.com" allows every name below example.com.
    allowed_hosts: tuple[str, ...] = ()
    any_address_host: bool = False  # --listen: a Host that is an IP address (a LAN browser typed it) is fine
    missing_host_allowed: bool = True  # HTTP/1.0 without a Host header: only for a server on loopback alone
    session_cookie_samesite: str = "strict"  # the login cookie's SameSite ("lax" behind a share link)
    upload_folder: Path | None = None  # pruned after each upload to the two limits below
    upload_folder_max_bytes: int = 2 * 2**30
    upload_folder_max_files: int = 2000


@dataclass
class LoginThrottle:
    """Failed logins per client address in a sliding window (the only state; one per server). Addresses whose
    failures have all left the window are forgotten, so the table cannot grow without bound."""
    failures_allowed: int
    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 10_000  # past this many addresses with recent failures, the stalest are dropped
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _swept_at: float = float("-inf")

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(client)
            if len(recent) < self.failures_allowed:
                return 0.0
            return max(0.0, recent[0] + self.window_seconds - self.clock())

    def failed(self, client: str):
        with self._lock:
            self._sweep()
            self._failures.setdefault(client, deque()).append(self.clock())
            self._recent(client)

    def succeeded(self, client: str):
        with self._lock:
            self._failures.pop(client, None)

    def clients(self) -> int:
        """How many addresses are remembered."""
        with self._lock:
            self._sweep(force=True)
            return len(self._failures)

    def _recent(self, client: str) -> deque:
        recent = self._failures.get(client, deque())
        while recent and recent[0] <= self.clock() - self.window_seconds:
            recent.popleft()
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent

    def _sweep(self, force: bool = False):
        """Forget stale addresses, at most once a window (or when the table is full); then, if a flood of
        addresses still fills it, the ones whose last failure is oldest."""
        now = self.clock()
        if not force and now - self._swept_at < self.window_seconds and len(self._failures) < self.max_clients:
            return
        self._swept_at = now
        for client in list(self._failures):
            self._recent(client)
        excess = len(self._failures) - self.max_clients + (0 if force else 1)  # room for the one being added
        if excess > 0:
            for client, _ in sorted(self._failures.items(), key=lambda item: item[1][-1])[:excess]:
                del self._failures[client]


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


def servable_file(target: str, policy: HttpPolicy) -> bool:
    """A file route may serve `target`: inside a file root, and from the outputs folder only an image (never
    the job history database or a file still being written)."""
    if not inside_roots(target, policy.file_roots):
        return False
    if not inside_roots(target, policy.image_only_roots):
        return True
    name = Path(target).name.lower()
    return name.endswith(SERVED_OUTPUT_SUFFIXES) and not name.startswith(".")


def same_origin(origin: str, headers: dict[str, str]) -> bool:
    """The Origin names the host the request was sent to. Only the Host header counts: X-Forwarded-Host is a
    header any client can write, so it proves nothing (a proxy that rewrites Host needs --cors-allow-origins)."""
    if origin == "null":
        return False
    origin_host = urlsplit(origin).netloc.lower()
    return bool(origin_host) and origin_host == headers.get("host", "").strip().lower()


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
        if scope["type"] == "http":
            send = self._with_security_headers(send)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            return await self._refuse(scope, receive, send, *refusal)
        path, method = scope["path"], scope.get("method")
        if path in LOGIN_PATHS and method == "POST":
            send = self._watch_login(send, client_address(scope))
        if path in UPLOAD_PATHS and method == "POST" and self.policy.upload_folder is not None:
            send = self._prune_after_upload(send)
        if path in LOGOUT_PATHS:
            scope = {**scope, "method": "GET"}  # Gradio's logout route is a GET; ours is a POST (see refusal)
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
        """(status, message, extra headers) when the request must not reach the app, else None. Counts HTTP
        Basic credentials for the login throttle on the way."""
        path, method = scope["path"], scope.get("method", "GET")
        policy = self.policy
        if not host_allowed(headers.get("host"), policy.allowed_hosts, policy.any_address_host,
                            policy.missing_host_allowed):
            shown = headers.get("host", "")[:100] or "(none)"
            return 400, (f"Host {shown!r} is not a name of this server; if it is, start the server with "
                         "--allowed-hosts naming it"), {}
        raw_path = scope.get("raw_path", b"").decode("latin-1") or path
        if suspicious_path(raw_path) or suspicious_path(path):
            return 404, "Not found", {}
        origin = headers.get("origin")
        unsafe = method in UNSAFE_METHODS or scope["type"] == "websocket"
        if origin and unsafe and origin not in policy.allowed_origins and not self._same_origin(origin, headers):
            return 403, f"cross-origin request from {origin} refused (see --cors-allow-origins)", {}
        if path in LOGOUT_PATHS and method != "POST":
            return 405, "log out with POST /logout (a link on another site must not end your sessions)", \
                {"allow": "POST"}
        declared = headers.get("content-length", "0").strip() or "0"
        if not declared.isdigit():
            return 400, "Content-Length is not a number", {}
        if int(declared) > policy.max_body_bytes:
            return 413, f"request body larger than the limit of {policy.max_body_bytes:,} bytes", {}
        denied = self._credentials_refusal(scope, path, method, headers)
        if denied is not None:
            return denied
        target = file_route_target(path)
        if target is not None and not servable_file(unquote(target), policy):
            return 403, "Forbidden: only generated images and uploads are served", {}
        return None

    def _same_origin(self, origin: str, headers: dict[str, str]) -> bool:
        """Same origin as the request, and that origin's host one this server answers to."""
        return same_origin(origin, headers) and host_allowed(
            urlsplit(origin).netloc, self.policy.allowed_hosts, self.policy.any_address_host, False)

    def _credentials_refusal(self, scope, path: str, method: str, headers: dict[str, str]):
        """Throttle, then check the credentials this route needs. A login attempt is a POST to the login form
        or any request with HTTP Basic credentials where credentials are set; only a real match (the login
        form's 200, Basic credentials that match) clears an address's failures."""
        client = client_address(scope)
        api_route = path.startswith(API_PREFIXES)
        allowed = self.policy.api_credentials if api_route else self.policy.ui_credentials
        basic_sent = headers.get("authorization", "").lower().startswith("basic ") and bool(allowed)
        login_form = path in LOGIN_PATHS and method == "POST" and bool(self.policy.ui_credentials)
        if basic_sent or login_form:
            wait = self.throttle.retry_after(client)
            if wait > 0:
                return 429, f"too many failed logins; try again in {wait:.0f} s", {"retry-after": f"{wait:.0f}"}
        basic_matched = basic_sent and credentials_match(basic_credentials(headers), allowed)
        if basic_sent:
            if basic_matched:
                self.throttle.succeeded(client)
            else:
                self.throttle.failed(client)
                log.warning("failed login (HTTP Basic) from %s", client)
        if api_route:
            if allowed and not basic_matched:
                return 401, "Not authenticated", {"www-authenticate": "Basic"}
            return None
        if not allowed or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if basic_matched or gradio_session_user(scope.get("app"), parse_cookies(headers.get("cookie", ""))):
            return None
        return 401, "Not authenticated", {}

    def _watch_login(self, send, client: str):
        """Count the login form's answer: 200 (Gradio's answer to good credentials) clears the failures, 400
        (wrong credentials) is a failure."""
        async def watched(message):
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.throttle.succeeded(client)
                elif message["status"] in (400, 401):
                    self.throttle.failed(client)
                    log.warning("failed login from %s", client)
            await send(message)
        return watched

    def _with_security_headers(self, send):
        """Add SECURITY_HEADERS (unless the route set its own) and give login cookies our SameSite."""
        samesite = self.policy.session_cookie_samesite.encode()

        async def secured(message):
            if message["type"] == "http.response.start":
                headers = [(name, with_samesite(value, samesite) if name.lower() == b"set-cookie" else value)
                           for name, value in message.get("headers", [])]
                present = {name.lower() for name, _ in headers}
                headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
                            if name.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)
        return secured

    def _prune_after_upload(self, send):
        """Once an upload has been answered, keep the upload folder within its limits (in a thread: it walks
        the folder)."""
        policy = self.policy

        async def pruning(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await asyncio.to_thread(prune_folder, policy.upload_folder, policy.upload_folder_max_bytes,
                                        policy.upload_folder_max_files)
        return pruning

    async def _refuse(self, scope, receive, send, status: int, message: str, extra_headers: dict):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def client_address(scope) -> str:
    return (scope.get("client") or ("unknown",))[0]


def with_samesite(cookie: bytes, samesite: bytes) -> bytes:
    """A Set-Cookie value with its SameSite attribute replaced (Gradio sets SameSite=None on its login cookie,
    which would let other sites' requests carry it)."""
    parts = [part for part in cookie.split(b";") if not part.strip().lower().startswith(b"samesite")]
    return b";".join(parts) + b"; SameSite=" + samesite
