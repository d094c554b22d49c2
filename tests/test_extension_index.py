"""Loading an extension index (issue 26, item 3): refused exactly when installing is, https only with a size cap
and a timeout, never from the server's own network or disk on an exposed server, and errors that do not echo what
a remote answered. "Apply" (switching extensions on or off) is gated like installing."""
from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time

import httpx
import pytest

from backend.plugins import index as extension_index
from backend.plugins.installer import ExtensionInstaller, ExtensionInstallError, extension_access
from backend.plugins.loader import Extensions
from tests.server_process import ServerProcess
from tests.ui_protocol import UiSession

INDEX = {"extensions": [{"name": "Greeter", "url": "https://example.com/me/greeter.git", "tags": ["script"]}]}
REFUSED = extension_access(listen=True, share=False, insecure=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1/localhost and a client context that trusts it."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    client = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    return folder, client


@pytest.fixture
def https_server(certificate):
    """An https server on 127.0.0.1 answering each path as `routes` says; `hits` counts connections."""
    folder, _ = certificate
    routes: dict[str, tuple[int, dict, bytes]] = {}
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b"SECRET-INTERNAL-PAGE"))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if callable(body):
                self.end_headers()
                body(self.wfile)
                return
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", routes, hits
    server.shutdown()


def local_installer(tmp_path) -> ExtensionInstaller:
    return ExtensionInstaller(tmp_path / "extensions", refused_because=None, local=True)


def test_loading_the_index_is_refused_exactly_when_installing_is(tmp_path):
    refused = ExtensionInstaller(tmp_path / "extensions", refused_because=REFUSED, local=False)
    index = tmp_path / "index.json"
    index.write_text(json.dumps(INDEX))
    for source in (str(index), "/etc/passwd", "https://127.0.0.1:1/index.json", "http://169.254.169.254/"):
        with pytest.raises(ExtensionInstallError, match="--enable-insecure-extension-access"):
            refused.load_index(source)
    assert [e.name for e in local_installer(tmp_path).load_index(str(index))] == ["Greeter"]


def test_apply_is_gated_like_installing(tmp_path):
    folder = tmp_path / "extensions"
    (folder / "probe").mkdir(parents=True)
    (folder / "probe" / "__init__.py").write_text("def register(api):\n    pass\n")
    extensions = Extensions(folder, tmp_path / "state.json")
    extensions.load_all()
    with pytest.raises(ExtensionInstallError, match="--listen"):
        ExtensionInstaller(folder, refused_because=REFUSED, local=False).apply_enabled(extensions, [])
    assert extensions.will_be_enabled("probe") and not (tmp_path / "state.json").exists()
    ExtensionInstaller(folder, refused_because=None).apply_enabled(extensions, [])
    assert not extensions.will_be_enabled("probe")


def test_an_exposed_server_never_reads_its_own_network_or_disk(tmp_path, https_server):
    """--listen with --enable-insecure-extension-access: installs are allowed, yet the index loader fetches
    only public https addresses; nothing is connected to."""
    base, routes, hits = https_server
    routes["/index.json"] = (200, {}, json.dumps(INDEX).encode())
    exposed = ExtensionInstaller(tmp_path / "extensions", refused_because=None, local=False)
    port = base.rsplit(":", 1)[1]
    cases = {f"{base}/index.json": "own network", f"https://localhost:{port}/index.json": "own network",
             "https://10.1.2.3/index.json": "own network", "https://[::1]/x": "own network",
             "https://169.254.169.254/latest/meta-data": "own network",
             f"http://127.0.0.1:{port}/index.json": "https://", "file:///etc/passwd": "https://",
             "ftp://example.com/index.json": "https://", "/etc/shadow": "https:// URL",
             "/root/.ssh/id_rsa": "https:// URL", "/dev/zero": "https:// URL"}
    for source, reason in cases.items():
        with pytest.raises(ExtensionInstallError, match=reason) as refused:
            exposed.load_index(source)
        assert "no such file" not in str(refused.value).lower() and "exists" not in str(refused.value), source
    assert hits == []


def test_a_local_server_reads_only_regular_files_of_bounded_size(tmp_path):
    installer = local_installer(tmp_path)
    started = time.monotonic()
    with pytest.raises(ExtensionInstallError, match="not a regular file"):
        installer.load_index("/dev/zero")  # before: read until MemoryError
    assert time.monotonic() - started < 10
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (extension_index.MAX_INDEX_BYTES + 1))
    with pytest.raises(ExtensionInstallError, match="larger than"):
        installer.load_index(str(big))


def test_https_index_with_cap_timeout_and_quiet_errors(tmp_path, https_server, certificate, monkeypatch):
    base, routes, _ = https_server
    _, trusted = certificate
    installer = local_installer(tmp_path)  # a local server may use a mirror on its own network
    routes["/index.json"] = (200, {}, json.dumps(INDEX).encode())
    routes["/moved"] = (302, {"location": "/index.json"}, b"")
    routes["/plain"] = (302, {"location": f"http://127.0.0.1:{base.rsplit(':', 1)[1]}/index.json"}, b"")
    routes["/error"] = (500, {}, b"SECRET-INTERNAL-PAGE")
    routes["/html"] = (200, {}, b"<html>SECRET-INTERNAL-PAGE</html>")
    routes["/huge"] = (200, {}, lambda out: [out.write(b" " * 2**20) for _ in range(10)])  # no Content-Length
    routes["/slow"] = (200, {}, lambda out: [(out.write(b" "), out.flush(), time.sleep(0.2)) for _ in range(100)])

    assert [e.url for e in installer.load_index(f"{base}/index.json", tls=trusted)] == [INDEX["extensions"][0]["url"]]
    assert [e.name for e in installer.load_index(f"{base}/moved", tls=trusted)] == ["Greeter"]
    with pytest.raises(ExtensionInstallError, match="certificate"):
        installer.load_index(f"{base}/index.json")  # the system's trust store does not know this certificate
    with pytest.raises(ExtensionInstallError, match="https://"):
        installer.load_index(f"{base}/plain", tls=trusted)
    for path, reason in (("/error", "HTTP 500"), ("/html", "not JSON"), ("/huge", "larger than")):
        with pytest.raises(ExtensionInstallError, match=reason) as failed:
            installer.load_index(f"{base}{path}", tls=trusted)
        assert "SECRET" not in str(failed.value)
    monkeypatch.setattr(extension_index, "TIMEOUT_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(ExtensionInstallError, match="did not answer"):
        installer.load_index(f"{base}/slow", tls=trusted)  # one byte every 0.2 s, 20 s in all
    assert time.monotonic() - started < 10


def test_the_extensions_tab_refuses_index_and_apply_on_an_exposed_server(tmp_path, models_dir):
    extensions = tmp_path / "extensions"
    (extensions / "probe").mkdir(parents=True)
    (extensions / "probe" / "__init__.py").write_text("def register(api):\n    pass\n")
    server = ServerProcess(tmp_path, models_dir, "--listen", "--extensions-dir", str(extensions)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            session = UiSession(client)
            for source in ("/etc/shadow", "http://127.0.0.1:1/", "/dev/zero"):
                done, answer = session.call("extensions_index_load", {"extensions_index_url": source})
                assert done and "--enable-insecure-extension-access" in answer and "no such file" not in answer
            done, answer = session.call("extensions_apply", {"extensions_enabled": []})
            assert done and "--enable-insecure-extension-access" in answer
        assert not (tmp_path / "cache" / "extensions.json").exists()  # nothing was switched off
    finally:
        server.stop()


def test_lookups_of_private_names_are_refused_before_connecting(monkeypatch):
    """A public-looking name whose DNS answer is private (or mixes in one private address) is refused."""
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "rebound.example": ["127.0.0.1"]}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **_: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answers[host]])
    for host in answers:
        with pytest.raises(extension_index.ExtensionIndexError, match="own network"):
            extension_index.read_index(f"https://{host}/index.json", local=False)
