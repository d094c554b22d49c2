"""The guard in front of every route (backend/http/security.py), driven in process with Starlette's TestClient
around a small stand-in app that answers like Gradio's routes do: Host allow-list (DNS rebinding), same-origin
checks, the login throttle, logout, cookies, security headers, served files and the upload folder (issue 26)."""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import app as app_module
from backend.http.allowed_hosts import host_allowed, host_name, parse_allowed_hosts
from backend.http.security import HttpPolicy, HttpSecurityMiddleware, LoginThrottle
from backend.http.upload_folder import prune_folder

USER, PASSWORD = "alice", "correct horse"
LOCAL = "127.0.0.1:7860"


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def stand_in_app(policy: HttpPolicy, calls: list) -> Starlette:
    """Routes shaped like Gradio's and the API's; each records that it ran (the guard must stop requests before)."""
    async def record(request: Request):
        calls.append((request.method, request.url.path))
        return PlainTextResponse("ran")

    async def login(request: Request):
        form = await request.form()
        if (form.get("username"), form.get("password")) != (USER, PASSWORD):
            return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)
        response = JSONResponse({"success": True})
        response.set_cookie("access-token-x", "token", httponly=True, samesite="none", secure=True)
        response.set_cookie("access-token-unsecure-x", "token", httponly=True)
        return response

    async def logout(request: Request):
        calls.append((request.method, "/logout"))
        return Response(status_code=302, headers={"location": "/"})

    async def file_route(request: Request):
        return FileResponse(request.path_params["path"])

    async def upload(request: Request):
        folder = policy.upload_folder / f"{time.monotonic_ns()}"
        folder.mkdir()
        (folder / "upload.png").write_bytes(await request.body())
        return JSONResponse([str(folder / "upload.png")])

    routes = [Route("/", record), Route("/favicon.ico", record), Route("/login", login, methods=["POST"]),
              Route("/logout", logout, methods=["GET"]), Route("/sdapi/v1/sd-models", record),
              Route("/controlnet/model_list", record),
              Route("/gradio_api/queue/join", record, methods=["POST"]),
              Route("/gradio_api/file={path:path}", file_route),
              Route("/gradio_api/upload", upload, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(HttpSecurityMiddleware, policy=policy)])


@pytest.fixture
def guarded(tmp_path):
    """make(**policy fields) -> (TestClient, calls made to the app behind the guard)."""
    def make(**fields):
        calls = []
        policy = HttpPolicy(**fields)
        client = TestClient(stand_in_app(policy, calls), base_url=f"http://{LOCAL}", raise_server_exceptions=True)
        return client, calls
    return make


# --- 1. DNS rebinding: the Host header must name this server ----------------------------------------------------

REBINDING = {"host": "rebind.example:7860", "origin": "http://rebind.example:7860"}


def test_a_rebinding_request_is_refused_before_any_route(guarded):
    client, calls = guarded()
    join = client.post("/gradio_api/queue/join", headers=REBINDING, json={"fn_index": 0})
    assert join.status_code == 400 and "rebind.example" in join.json()["detail"]
    assert client.get("/", headers={"host": "rebind.example"}).status_code == 400
    assert calls == []  # no route ran
    # the same request from the page on 127.0.0.1 or localhost goes through
    for host in ("127.0.0.1:7860", "localhost:7860", "localhost", "[::1]:7860"):
        answer = client.post("/gradio_api/queue/join", headers={"host": host, "origin": f"http://{host}"}, json={})
        assert answer.status_code == 200, host
    assert len(calls) == 4


def test_lan_addresses_and_named_hosts_need_listen_or_allowed_hosts(guarded):
    local, _ = guarded()
    assert local.get("/", headers={"host": "192.168.1.20:7860"}).status_code == 400
    listening, _ = guarded(any_address_host=True, allowed_hosts=("workstation", "*.lan.example"),
                           missing_host_allowed=False)
    for host in ("192.168.1.20:7860", "[fe80::1]:7860", "workstation:7860", "gpu.lan.example"):
        lan = listening.post("/gradio_api/queue/join", headers={"host": host, "origin": f"http://{host}"}, json={})
        assert lan.status_code == 200, host
    for host in ("rebind.example", "lan.example.evil", "workstation.evil", "bad host", "x:1:2"):
        assert listening.get("/", headers={"host": host}).status_code == 400, host


def test_requests_without_a_host_header_only_reach_a_local_server(guarded):
    local, _ = guarded()
    exposed, _ = guarded(any_address_host=True, missing_host_allowed=False)
    for client, expected in ((local, 200), (exposed, 400)):
        # TestClient always sends a Host; an HTTP/1.0 client does not
        scope_headers = [(b"user-agent", b"old")]
        assert call_raw(client.app, "GET", "/", scope_headers) == expected


def call_raw(asgi_app, method: str, path: str, headers: list) -> int:
    """The status an ASGI app answers to a request with exactly these headers."""
    import asyncio

    statuses = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": headers,
             "query_string": b"", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7860), "scheme": "http",
             "http_version": "1.0", "root_path": "", "app": asgi_app}
    asyncio.run(asgi_app(scope, receive, send))
    return statuses[0]


def test_host_names_are_parsed_strictly():
    assert host_name("Example.COM.:7860") == "example.com"
    assert host_name("[::1]:80") == "::1"
    for bad in ("::1", "a b", "x:port", "x:123456", "[::1", "[zz]", "a/b", "http://x"):
        assert host_name(bad) is None, bad
    assert host_allowed("127.9.9.9:1", (), False, False) and host_allowed("app.localhost", (), False, False)
    assert not host_allowed("localhost.evil.example", (), False, False)
    assert parse_allowed_hosts(" sd.example.com:7860, *.lan ") == ("sd.example.com", "*.lan")
    with pytest.raises(ValueError, match="not a host name"):
        parse_allowed_hosts("https://sd.example.com/")


def test_share_tunnel_host_is_allowed_once_known(guarded):
    client, _ = guarded(missing_host_allowed=False)
    share = {"host": "abcdef123.gradio.live", "origin": "https://abcdef123.gradio.live"}
    assert client.post("/gradio_api/queue/join", headers=share, json={}).status_code == 400
    page = SimpleNamespace(share_url="https://abcdef123.gradio.live", server_app=client.app)
    app_module.allow_share_host(page, HttpPolicy(missing_host_allowed=False))
    assert client.post("/gradio_api/queue/join", headers=share, json={}).status_code == 200
    assert client.get("/", headers={"host": "other.gradio.live"}).status_code == 400


def test_allowed_hosts_flag(tmp_path):
    args = app_module.parse_args(["--allowed-hosts", "sd.example.com,*.home.arpa", "--cache-dir", str(tmp_path)])
    policy = app_module.http_policy(args, app_module.access_from_args(args), tmp_path / "out", tmp_path / "up")
    assert policy.allowed_hosts == ("sd.example.com", "*.home.arpa") and policy.missing_host_allowed
    assert not policy.any_address_host
    listen = app_module.parse_args(["--listen"])
    policy = app_module.http_policy(listen, app_module.access_from_args(listen), tmp_path / "out", tmp_path / "up")
    assert policy.any_address_host and not policy.missing_host_allowed
    assert set(policy.allowed_hosts) >= {host_name(os.uname().nodename)}  # this machine's own name
    with pytest.raises(SystemExit, match="--allowed-hosts"):
        bad = app_module.parse_args(["--allowed-hosts", "http://x/"])
        app_module.http_policy(bad, app_module.access_from_args(bad), tmp_path, tmp_path)


# --- origin checks -----------------------------------------------------------------------------------------------

def test_origin_must_be_this_host_and_x_forwarded_host_proves_nothing(guarded):
    client, calls = guarded()
    forged = client.post("/gradio_api/queue/join", json={}, headers={
        "host": LOCAL, "origin": "http://evil.example", "x-forwarded-host": "evil.example"})
    assert forged.status_code == 403
    other_port = client.post("/gradio_api/queue/join", json={}, headers={"host": LOCAL, "origin": "http://127.0.0.1:9"})
    assert other_port.status_code == 403  # another local web app is another origin
    assert calls == []
    assert client.post("/gradio_api/queue/join", json={}, headers={"origin": f"http://{LOCAL}"}).status_code == 200


def test_cors_allow_origins_refuses_a_wildcard(tmp_path):
    for value in ("*", "https://good.example,*", "null"):
        args = app_module.parse_args(["--cors-allow-origins", value])
        with pytest.raises(SystemExit, match="--cors-allow-origins"):
            app_module.http_policy(args, app_module.access_from_args(args), tmp_path, tmp_path)


def test_controlnet_routes_take_the_api_credentials(guarded):
    """sd-webui-controlnet's /controlnet/* routes are API routes: API clients' credentials open them, the UI's
    do not."""
    client, calls = guarded(ui_credentials=(("ui-user", "ui-pw"),), api_credentials=((USER, PASSWORD),))
    assert client.get("/controlnet/model_list").status_code == 401
    assert client.get("/controlnet/model_list", headers=basic("ui-user", "ui-pw")).status_code == 401
    assert client.get("/controlnet/model_list", headers=basic(USER, PASSWORD)).status_code == 200
    assert len(calls) == 1


# --- 2. login throttle -------------------------------------------------------------------------------------------

def test_a_2xx_with_wrong_credentials_does_not_reset_the_throttle(guarded):
    """Before: any 2xx to a request with an Authorization header (a public favicon) cleared the failures."""
    client, _ = guarded(ui_credentials=((USER, PASSWORD),), api_credentials=((USER, PASSWORD),),
                        login_failures_allowed=5)
    statuses = []
    for attempt in range(12):
        statuses.append(client.get("/sdapi/v1/sd-models", headers=basic(USER, f"guess{attempt}")).status_code)
        client.get("/favicon.ico", headers=basic(USER, "wrong"))  # served (public), and a failure too
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}
    assert client.get("/sdapi/v1/sd-models", headers=basic(USER, PASSWORD)).status_code == 429


def test_only_a_real_match_clears_the_failures(guarded):
    client, _ = guarded(ui_credentials=((USER, PASSWORD),), api_credentials=((USER, PASSWORD),),
                        login_failures_allowed=5)
    for attempt in range(4):
        assert client.post("/login", data={"username": USER, "password": f"g{attempt}"}).status_code == 400
    assert client.get("/sdapi/v1/sd-models", headers=basic(USER, PASSWORD)).status_code == 200  # clears
    for attempt in range(4):
        assert client.post("/login", data={"username": USER, "password": f"h{attempt}"}).status_code == 400
    assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200  # clears
    for attempt in range(5):
        client.post("/login", data={"username": USER, "password": f"i{attempt}"})
    assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 429


def test_the_throttle_forgets_stale_addresses():
    now = [0.0]
    throttle = LoginThrottle(failures_allowed=3, window_seconds=60, clock=lambda: now[0], max_clients=100)
    for client in range(50):
        throttle.failed(f"10.0.0.{client}")
    assert throttle.clients() == 50
    now[0] = 61
    throttle.failed("10.0.1.1")
    assert throttle.clients() == 1  # the 50 stale addresses are gone
    for client in range(1000):  # a flood of fresh addresses within one window stays bounded
        throttle.failed(f"10.1.{client // 250}.{client % 250}")
    assert throttle.clients() <= 100
    assert throttle.retry_after("10.1.3.249") == 0  # one failure each: nobody is locked out


# --- 7. logout and the session cookie ----------------------------------------------------------------------------

def test_logout_is_a_same_origin_post(guarded):
    client, calls = guarded(ui_credentials=((USER, PASSWORD),))
    link = client.get("/logout", follow_redirects=False)
    assert link.status_code == 405 and link.headers["allow"] == "POST"
    cross_site = client.post("/logout", headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert cross_site.status_code == 403
    assert calls == []
    same_site = client.post("/logout", headers={"origin": f"http://{LOCAL}"}, follow_redirects=False)
    assert same_site.status_code == 302 and calls == [("GET", "/logout")]  # Gradio's GET route did the work


def test_login_cookies_are_same_site(guarded):
    for samesite in ("strict", "lax"):
        client, _ = guarded(ui_credentials=((USER, PASSWORD),), session_cookie_samesite=samesite)
        answer = client.post("/login", data={"username": USER, "password": PASSWORD})
        cookies = answer.headers.get_list("set-cookie")
        assert len(cookies) == 2
        for cookie in cookies:
            attributes = [part.strip().lower() for part in cookie.split(";")]
            assert f"samesite={samesite}" in attributes and "samesite=none" not in attributes, cookie


def test_share_links_get_lax_cookies_local_servers_strict(tmp_path):
    def policy(*flags):
        args = app_module.parse_args(list(flags))
        return app_module.http_policy(args, app_module.access_from_args(args), tmp_path, tmp_path)
    assert policy().session_cookie_samesite == "strict"
    assert policy("--share").session_cookie_samesite == "lax"


# --- 9. headers, served files, uploads ---------------------------------------------------------------------------

def test_every_answer_forbids_framing_and_sniffing(guarded):
    client, _ = guarded(ui_credentials=((USER, PASSWORD),))
    for answer in (client.get("/"), client.get("/sdapi/v1/sd-models"), client.get("/", headers={"host": "x.example"}),
                   client.post("/login", data={"username": USER, "password": PASSWORD})):
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_history_database_is_not_served(guarded, tmp_path):
    outputs, uploads = tmp_path / "outputs", tmp_path / "uploads"
    (outputs / "txt2img-images").mkdir(parents=True)
    uploads.mkdir()
    (outputs / "history.sqlite3").write_bytes(b"SQLite format 3\x00secret prompts")
    (outputs / "txt2img-images" / "00000-1.png").write_bytes(b"\x89PNG image")
    (outputs / "txt2img-images" / ".partial-x.png").write_bytes(b"\x89PNG half")
    (uploads / "notes.txt").write_bytes(b"an upload")
    client, _ = guarded(file_roots=(outputs, uploads), image_only_roots=(outputs,))
    assert client.get(f"/gradio_api/file={outputs}/txt2img-images/00000-1.png").content == b"\x89PNG image"
    assert client.get(f"/gradio_api/file={uploads}/notes.txt").content == b"an upload"
    for refused in ("history.sqlite3", "history.sqlite3-wal", "txt2img-images/.partial-x.png"):
        answer = client.get(f"/gradio_api/file={outputs}/{refused}")
        assert answer.status_code == 403 and b"secret" not in answer.content, refused


def test_uploads_kept_are_capped(guarded, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    client, _ = guarded(upload_folder=uploads, upload_folder_max_files=5, upload_folder_max_bytes=10_000,
                        file_roots=(uploads,))
    for _ in range(12):
        assert client.post("/gradio_api/upload", content=b"x" * 1000).status_code == 200
    files = [p for p in uploads.rglob("*") if p.is_file()]
    assert len(files) == 5
    for _ in range(3):
        client.post("/gradio_api/upload", content=b"y" * 4000)
    assert sum(p.stat().st_size for p in uploads.rglob("*") if p.is_file()) <= 10_000
    assert not [p for p in uploads.iterdir() if p.is_dir() and not any(p.iterdir())]  # no empty folders left


def test_prune_folder_deletes_the_oldest_first(tmp_path):
    for index in range(4):
        path = tmp_path / f"d{index}" / "f.bin"
        path.parent.mkdir()
        path.write_bytes(b"z" * 100)
        os.utime(path, (1000 + index, 1000 + index))
    assert prune_folder(tmp_path, max_bytes=250, max_files=10) == 2
    assert sorted(p.parent.name for p in tmp_path.rglob("*.bin")) == ["d2", "d3"]
    assert not Path(tmp_path / "d0").exists()
