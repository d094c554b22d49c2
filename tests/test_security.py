"""The server as a stranger meets it: every route behind the login, files confined to outputs and uploads,
path tricks, other web sites, oversized bodies and password guessing (issue 9)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket

import httpx
import pytest
from PIL import Image

import app
from backend.http.security import LoginThrottle, suspicious_path
from tests.server_process import free_port

USER, PASSWORD = "alice", "correct horse"
GOOD_SITE = "https://good.example"
EVIL_SITE = "https://evil.example"
# Routes anyone may fetch: the login page and the front-end code it needs. Everything else needs the login.
PUBLIC = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/robots.txt", "/manifest.json", "/theme.css",
          "/gradio_api/theme.css", "/login_check", "/login_check/", "/gradio_api/login_check",
          "/gradio_api/login_check/", "/gradio_api/startup-events", "/config", "/config/"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/static/", "/gradio_api/svelte/", "/pwa_icon")
ECHO_EXTENSION = '''
def register(api):
    def echo(path: str):
        return {"path": path}
    api.add_api_route("echo/{path:path}", echo, methods=["GET"])
'''


def png_base64(size=(64, 64), colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    """The real app (app.launch), in this process: --api, a UI password that also guards the API, one allowed
    other site, a 1 MB upload limit, and an extension with a route."""
    root = tmp_path_factory.mktemp("secure")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    os.link(checkpoint_files["sd1"], root / "models" / "Stable-diffusion" / "tiny.safetensors")
    (root / "extensions" / "echo").mkdir(parents=True)
    (root / "extensions" / "echo" / "__init__.py").write_text(ECHO_EXTENSION)
    outputs = root / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outputs / "00000-1.png")
    secret = root / "secret.txt"
    secret.write_text("not for you")
    (outputs / "link.png").symlink_to(secret)  # a symlink inside outputs that points outside
    args = app.parse_args(["--api", "--port", str(free_port()), "--gradio-auth", f"{USER}:{PASSWORD}",
                           "--cors-allow-origins", GOOD_SITE, "--max-upload-mb", "1", "--device", "cpu",
                           "--allowed-hosts", "sd.example",
                           "--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"),
                           "--cache-dir", str(root / "cache"), "--extensions-dir", str(root / "extensions")])
    page, services = app.launch(args)
    try:
        yield {"url": page.local_url.rstrip("/"), "app": page.server_app, "root": root, "secret": secret,
               "output": outputs / "00000-1.png", "services": services}
    finally:
        page.close()
        services.close()


@pytest.fixture(scope="module")
def logged_in(server):
    """A browser-like client holding Gradio's login cookie."""
    client = httpx.Client(base_url=server["url"], timeout=120)
    answer = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    yield client
    client.close()


def concrete(path: str) -> str:
    """A route pattern with its parameters filled in (`{path:path}` -> 'x')."""
    return re.sub(r"\{[^}]+\}", "x", path)


def all_routes(routes):
    """(path, methods) of every route, also inside routers Gradio includes (FastAPI keeps those whole)."""
    for route in routes:
        if isinstance(getattr(route, "path", None), str):
            yield route.path, getattr(route, "methods", None) or {"GET"}
        included = getattr(route, "original_router", None)
        yield from all_routes(included.routes if included is not None else getattr(route, "routes", []))


def test_every_route_needs_the_login_except_the_login_page(server):
    checked = set()
    with httpx.Client(base_url=server["url"], timeout=60) as client:
        for pattern, methods in all_routes(server["app"].routes):
            path = concrete(pattern)
            if path in PUBLIC or path.startswith(PUBLIC_PREFIXES):
                continue
            for method in sorted(set(methods) - {"HEAD"}):
                answer = client.request(method, path)
                assert answer.status_code in (401, 403, 404), f"{method} {path} answered {answer.status_code}"
                checked.add(pattern)
    # Gradio's own routes (queue, upload, file, heartbeat, stream, monitoring...), the REST API, the docs and the
    # extension route were all reached
    assert {"/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/file={path_or_url:path}",
            "/gradio_api/heartbeat/{session_hash}", "/monitoring/{key}", "/sdapi/v1/txt2img", "/docs",
            "/extensions/echo/echo/{path:path}"} <= checked and len(checked) > 80


def test_credentials_open_the_ui_the_api_and_the_docs(server, logged_in):
    assert logged_in.get("/config").status_code == 200
    assert logged_in.get("/gradio_api/info").status_code == 200
    api = httpx.get(server["url"] + "/sdapi/v1/sd-models", auth=(USER, PASSWORD))  # the UI login guards the API
    assert api.status_code == 200 and api.json()[0]["model_name"] == "tiny"
    assert httpx.get(server["url"] + "/sdapi/v1/sd-models", auth=(USER, "wrong")).status_code == 401
    assert httpx.get(server["url"] + "/openapi.json", auth=(USER, PASSWORD)).status_code == 200
    assert httpx.get(server["url"] + "/extensions/echo/echo/hello", auth=(USER, PASSWORD)).json() == {"path": "hello"}


def test_files_only_from_outputs_and_uploads(server, logged_in):
    output = logged_in.get(f"/gradio_api/file={server['output']}")
    assert output.status_code == 200 and Image.open(io.BytesIO(output.content)).getpixel((0, 0)) == (1, 2, 3)
    secret = server["secret"]
    refused = {
        "absolute path outside": f"/gradio_api/file={secret}",
        "the app's own code": f"/gradio_api/file={app.__file__}",
        "old file route": f"/file={secret}",
        "deprecated file/ route": f"/gradio_api/file/{secret}",
        "symlink in outputs to outside": f"/gradio_api/file={server['output'].parent / 'link.png'}",
        "a URL fetched by the server": "/gradio_api/file=http://127.0.0.1:1/x.png",
        "relative to the working dir": "/gradio_api/file=app.py",
    }
    for what, url in refused.items():
        answer = logged_in.get(url)
        assert answer.status_code in (403, 404), f"{what}: {answer.status_code}"
        assert b"not for you" not in answer.content and b"def main" not in answer.content, what


@pytest.mark.parametrize("path", [
    "/gradio_api/file={outputs}/../secret.txt",
    "/gradio_api/file={outputs}/%2e%2e/secret.txt",
    "/gradio_api/file={outputs}/%252e%252e/secret.txt",
    "/gradio_api/file={outputs}%2F..%2Fsecret.txt",
    "/gradio_api/file={outputs}\\..\\secret.txt",
    "/gradio_api/file={outputs}%5C..%5Csecret.txt",
    "/gradio_api/file=C:\\Windows\\win.ini",
    "/gradio_api/file={outputs}/00000-1.png%00.txt",
    "/extensions/echo/echo/..%2F..%2Fapp.py",
    "/extensions/echo/echo/%2e%2e/%2e%2e/app.py",
    "/extensions/echo/echo/..\\..\\app.py",
    "/sdapi/v1/..%2F..%2Fapp.py",
    "/static/..%2F..%2Fapp.py",
    "/assets/%2e%2e/%2e%2e/app.py",
])
def test_path_traversal_in_every_form_is_refused(server, logged_in, path):
    raw_path = path.format(outputs=server["root"] / "outputs").encode()
    # sent byte for byte, as a hostile client does (httpx would resolve a literal `..` itself)
    request = logged_in.build_request("GET", httpx.URL(server["url"]).copy_with(raw_path=raw_path))
    answer = logged_in.send(request)
    assert answer.status_code in (403, 404), f"{path}: {answer.status_code}"
    assert b"not for you" not in answer.content and b"def main" not in answer.content
    assert b'"path"' not in answer.content  # the extension's route never saw the request


def test_model_and_network_names_are_names_not_paths(server):
    api = server["url"] + "/sdapi/v1"
    auth = (USER, PASSWORD)
    for name in ("../../secret", str(server["secret"]), "..\\..\\secret", "../Stable-diffusion/tiny"):
        option = httpx.post(api + "/options", json={"sd_model_checkpoint": name}, auth=auth, timeout=120)
        assert option.status_code == 422 and "sd_model_checkpoint" in option.text, name
        vae = httpx.post(api + "/txt2img", auth=auth, timeout=120, json={
            "prompt": "x", "steps": 1, "width": 64, "height": 64, "override_settings": {"sd_vae": name}})
        assert vae.status_code == 422 and "sd_vae" in vae.text, name
        upscale = httpx.post(api + "/extra-single-image", auth=auth, timeout=120, json={
            "image": png_base64(), "upscaler_1": name})
        assert upscale.status_code == 422 and "upscaler_1" in upscale.text, name
    lora = httpx.post(api + "/txt2img", auth=auth, timeout=300, json={
        "prompt": "a cat <lora:../../secret:1>", "steps": 1, "width": 64, "height": 64})
    assert lora.status_code == 200
    assert any("../../secret" in warning for warning in json.loads(lora.json()["info"])["warnings"])


def test_other_web_sites_cannot_call_or_read(server, logged_in):
    url = server["url"]
    # a page on another site, in the logged-in user's browser: reads get no CORS grant, writes are refused
    # (reached by a name other than localhost, where Gradio's own CORS handling would allow any origin)
    read = logged_in.get("/sdapi/v1/sd-models", headers={"Origin": EVIL_SITE, "Host": "sd.example:7860"},
                         auth=(USER, PASSWORD))
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
    preflight = httpx.options(url + "/sdapi/v1/txt2img", headers={
        "Origin": EVIL_SITE, "Access-Control-Request-Method": "POST", "Host": "sd.example:7860"})
    assert preflight.headers.get("access-control-allow-origin") != EVIL_SITE
    write = logged_in.post("/sdapi/v1/refresh-checkpoints", headers={"Origin": EVIL_SITE}, auth=(USER, PASSWORD))
    assert write.status_code == 403 and "cross-origin" in write.json()["detail"]
    join = logged_in.post("/gradio_api/queue/join", headers={"Origin": "null"}, json={})
    assert join.status_code == 403
    # the site the operator named, and the page's own origin, work
    allowed = logged_in.post("/sdapi/v1/refresh-checkpoints", headers={"Origin": GOOD_SITE}, auth=(USER, PASSWORD))
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == GOOD_SITE
    same = logged_in.post("/sdapi/v1/refresh-checkpoints", headers={"Origin": url}, auth=(USER, PASSWORD))
    assert same.status_code == 200


def test_bodies_over_the_upload_limit_are_refused(server, logged_in):
    big = base64.b64encode(os.urandom(2 * 2**20)).decode()  # 2 MB of data against a 1 MB limit
    answer = httpx.post(server["url"] + "/sdapi/v1/img2img", auth=(USER, PASSWORD), timeout=120,
                        json={"init_images": [big], "prompt": "x"})
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    upload = logged_in.post("/gradio_api/upload", files={"files": ("big.png", os.urandom(2 * 2**20), "image/png")})
    assert upload.status_code in (413, 400)
    # chunked, without a Content-Length
    streamed = httpx.post(server["url"] + "/sdapi/v1/png-info", auth=(USER, PASSWORD), timeout=120,
                          content=iter([b'{"image": "' + b"A" * 2**20] * 3 + [b'"}']),
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    host, port = server["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as raw:  # no client library sends this
        raw.sendall(b"POST /sdapi/v1/png-info HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
        assert raw.recv(200).split(b"\r\n")[0].split()[1].startswith(b"4")
    assert logged_in.get("/config").status_code == 200  # and the server goes on serving


def test_browser_logs_in_and_generates(server):
    """The login page works with the guard in front (its assets are public), and after logging in the page can
    run a job and show the image from the outputs folder."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page()
        refused = []
        page.on("response", lambda answer: refused.append(answer.url) if answer.status >= 500 else None)
        page.goto(server["url"] + "/")
        page.get_by_label("username").fill(USER)
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.locator("#txt2img_prompt textarea").fill("a red circle", timeout=120_000)
        page.locator("#txt2img_steps input[type=number]").fill("2")
        page.locator("#txt2img_generate").click()
        image = page.locator("#txt2img_gallery img").first
        image.wait_for(timeout=120_000)
        source = image.get_attribute("src")
        browser.close()
    assert "/gradio_api/file=" in source and not refused


def test_password_guessing_is_throttled(server):
    """Last in this module: it locks 127.0.0.1 out of logging in for a minute."""
    url = server["url"]
    statuses = [httpx.post(url + "/login", data={"username": USER, "password": f"guess{n}"}).status_code
                for n in range(10)]
    assert statuses == [400] * 10
    locked = httpx.post(url + "/login", data={"username": USER, "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    basic = httpx.get(url + "/sdapi/v1/sd-models", auth=(USER, PASSWORD))
    assert basic.status_code == 429  # the right password does not get through while locked out


def test_login_throttle_window():
    now = [0.0]
    throttle = LoginThrottle(failures_allowed=3, window_seconds=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(60)
    assert throttle.retry_after("b") == 0  # other clients are not affected
    now[0] = 30
    assert throttle.retry_after("a") == pytest.approx(30)
    now[0] = 60.5
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0


@pytest.mark.parametrize("path, suspicious", [
    ("/gradio_api/file=/tmp/outputs/x.png", False), ("/sdapi/v1/txt2img", False), ("/a..b/c", False),
    ("/a/../b", True), ("/a/%2e%2e/b", True), ("/a/%2E%2E%2Fb", True), ("/a/%252e%252e/b", True),
    ("/a\\b", True), ("/a/%5cb", True), ("/a/%00", True), ("/a/%25252e%25252e/b", True),
])
def test_suspicious_paths(path, suspicious):
    assert suspicious_path(path) is suspicious


def test_share_link_gets_a_password_unless_the_operator_opts_out(capsys, caplog):
    shared = app.access_from_args(app.parse_args(["--share"]))
    assert shared.generated_password and len(shared.generated_password) >= 16
    assert shared.ui == ((app.GENERATED_USER, shared.generated_password),) and shared.api == shared.ui
    assert app.access_from_args(app.parse_args(["--share"])).generated_password != shared.generated_password
    app.announce_access(app.parse_args(["--share"]), shared)
    printed = capsys.readouterr().out
    assert printed.count(shared.generated_password) == 1 and "--gradio-auth" in printed

    opted_out = app.access_from_args(app.parse_args(["--share", "--share-no-auth"]))
    assert opted_out.ui == () and opted_out.generated_password is None
    app.announce_access(app.parse_args(["--share", "--share-no-auth"]), opted_out)
    assert "anyone with the link" in caplog.text

    own = app.access_from_args(app.parse_args(["--share", "--gradio-auth", "bob:pw", "--api-auth", "bot:key"]))
    assert own.ui == (("bob", "pw"),) and own.api == (("bot", "key"),) and own.generated_password is None
    local = app.access_from_args(app.parse_args([]))
    assert local.ui == () and local.api == ()
