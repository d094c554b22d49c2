"""Attacks of issue 26 against a real server process (`python app.py`): DNS rebinding into an extension install,
LAN browsers with --listen, forged X-Forwarded-For against the login throttle, empty passwords, and Gradio's
upload folder."""
from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_process import ROOT, ServerProcess
from tests.ui_protocol import UiSession

REBINDING = {"host": "rebind.example:7860", "origin": "http://rebind.example:7860"}


def git(folder: Path, *args: str):
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   check=True, capture_output=True)


@pytest.fixture
def extension_repo(tmp_path) -> str:
    """A git repository holding an extension, as a file:// URL (what the attacker's page would install)."""
    repo = tmp_path / "origin" / "payload"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "__init__.py").write_text("def register(api):\n    pass\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "payload")
    return repo.as_uri()


def test_dns_rebinding_cannot_install_an_extension(tmp_path, models_dir, extension_repo):
    """A page on rebind.example whose name now points at 127.0.0.1 sends the install event as a same-origin
    request: refused with 400 before Gradio sees it. The page on 127.0.0.1 installs as before."""
    extensions = tmp_path / "extensions"
    server = ServerProcess(tmp_path, models_dir, "--extensions-dir", str(extensions)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as local, \
                httpx.Client(base_url=server.url, timeout=120, headers=REBINDING) as attacker:
            session = UiSession(local)
            session.client = attacker
            installed, answer = session.call("extensions_install_button", {"extensions_install_url": extension_repo})
            assert not installed and "rebind.example" in answer and "--allowed-hosts" in answer
            assert attacker.get("/").status_code == 400 and attacker.get("/config").status_code == 400
            assert not (extensions / "payload").exists()
            session.client = local
            installed, answer = session.call("extensions_install_button", {"extensions_install_url": extension_repo})
            assert installed and "Installed payload" in answer
            assert (extensions / "payload" / "__init__.py").is_file()
    finally:
        server.stop()


def lan_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_listen_serves_lan_browsers_and_refuses_rebinding(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir, "--listen", "--allowed-hosts", "sd.home.arpa").start()
    try:
        port = server.port
        address = lan_address()
        if address is not None:  # connect through the LAN address itself, as a browser on another machine does
            with httpx.Client(base_url=f"http://{address}:{port}", timeout=60) as lan:
                assert lan.get("/").status_code == 200 and lan.get("/config").status_code == 200
        for host in (f"192.168.77.5:{port}", f"localhost:{port}", f"{socket.gethostname()}:{port}",
                     f"sd.home.arpa:{port}"):
            assert httpx.get(server.url + "/config", headers={"host": host}, timeout=60).status_code == 200, host
        for host in ("rebind.example", f"rebind.example:{port}", "sd.home.arpa.evil.example"):
            assert httpx.get(server.url + "/config", headers={"host": host}, timeout=60).status_code == 400, host
    finally:
        server.stop()


def wrong_logins(url: str, addresses: list[str]) -> list[int]:
    return [httpx.get(url + "/sdapi/v1/sd-models", auth=("alice", f"guess{n}"), timeout=60,
                      headers={"x-forwarded-for": address}).status_code for n, address in enumerate(addresses)]


def test_forwarded_for_is_trusted_only_from_named_proxies(tmp_path, models_dir):
    """Before: uvicorn believed X-Forwarded-For from 127.0.0.1, so each guess could claim a new address."""
    server = ServerProcess(tmp_path, models_dir, "--api", "--api-auth", "alice:secret").start()
    try:
        statuses = wrong_logins(server.url, [f"203.0.113.{n}" for n in range(12)])
        assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    finally:
        server.stop()

    proxied = ServerProcess(tmp_path, models_dir, "--api", "--api-auth", "alice:secret",
                            "--forwarded-allow-ips", "127.0.0.1").start()
    try:
        assert wrong_logins(proxied.url, ["203.0.113.1"] * 11)[-1] == 429
        other = httpx.get(proxied.url + "/sdapi/v1/sd-models", auth=("alice", "secret"), timeout=60,
                          headers={"x-forwarded-for": "203.0.113.2"})
        assert other.status_code == 200  # the proxy's other client is not locked out
    finally:
        proxied.stop()


@pytest.mark.parametrize("flags, message", [
    (["--gradio-auth", "alice:"], "user 'alice' has an empty password"),
    (["--gradio-auth", ":"], "empty user name"),
    (["--share", "--gradio-auth", "bob:pw,alice:"], "user 'alice' has an empty password"),
    (["--api-auth", "bot:"], "--api-auth: user 'bot' has an empty password"),
])
def test_empty_passwords_are_refused_at_start(flags, message):
    started = subprocess.run([sys.executable, "app.py", *flags, "--port", "1"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode != 0 and message in started.stderr


def test_uploads_go_to_the_apps_own_folder(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/gradio_api/upload", files={"files": ("x.png", base64.b64decode(
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="))})
            assert answer.status_code == 200
            uploaded = Path(answer.json()[0]).resolve()
        assert uploaded.is_relative_to((tmp_path / "cache" / "uploads").resolve()) and uploaded.is_file()
    finally:
        server.stop()
