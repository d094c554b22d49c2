"""Reading an extension index (A1111's index.json) for the Extensions tab, with the care a server-side fetch of a
user's URL needs: https only; the host's addresses checked, and connected to, so that a server reachable from
other machines never fetches from its own network (loopback, private, link-local addresses); a size cap, a
timeout and a few redirects at most; and error messages that say what failed without echoing what a remote
answered. A file on the server is read only by a local server (the user then sits at the machine), and only a
regular file of bounded size (never /dev/zero or a FIFO).
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from backend.core.errors import UserError

MAX_INDEX_BYTES = 8 * 2**20  # A1111's index is about 1 MB
TIMEOUT_SECONDS = 30.0  # for the whole fetch, redirects included
MAX_REDIRECTS = 3


class ExtensionIndexError(UserError):
    """The index could not be read; the message says why, for the user."""

    def __init__(self, message: str):
        super().__init__(None, message)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def read_index(source: str, local: bool, tls: ssl.SSLContext | None = None) -> list[IndexEntry]:
    """The entries of the index at `source`: an https URL, or (only when `local`, a server on loopback alone) a
    JSON file on the server. `tls`: the certificates to trust (default: the system's)."""
    source = source.strip()
    if not source:
        raise ExtensionIndexError("give the URL of an extension index")
    if "://" in source:
        data = _fetch(source, local, tls or ssl.create_default_context())
    elif local:
        data = _read_file(Path(source).expanduser())
    else:
        raise ExtensionIndexError("an index can only be loaded from an https:// URL while the server is reachable from "
                          "other machines")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ExtensionIndexError("not an extension index: the answer is not JSON") from None
    items = parsed.get("extensions", []) if isinstance(parsed, dict) else []
    if not isinstance(items, list):
        raise ExtensionIndexError("not an extension index: no list of extensions")
    entries = []
    for item in items:
        if isinstance(item, dict) and item.get("url") and item.get("name"):
            tags = item.get("tags") if isinstance(item.get("tags"), list) else []
            entries.append(IndexEntry(str(item["name"]), str(item["url"]), str(item.get("description", "")),
                                      tuple(str(tag) for tag in tags)))
    return entries


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ExtensionIndexError(f"{path} is not a regular file")
            data = handle.read(MAX_INDEX_BYTES + 1)
    except OSError as error:
        raise ExtensionIndexError(f"cannot read {path}: {error.strerror or 'unreadable'}") from None
    if len(data) > MAX_INDEX_BYTES:
        raise ExtensionIndexError(f"{path} is larger than {MAX_INDEX_BYTES // 2**20} MB; not an extension index")
    return data


def _fetch(url: str, local: bool, tls: ssl.SSLContext) -> bytes:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ExtensionIndexError("the extension index must be an https:// URL")
        try:
            port = parts.port or 443
        except ValueError:
            raise ExtensionIndexError("the index URL has an invalid port") from None
        host = parts.hostname
        address = _vetted_address(host, port, local)
        connection = _PinnedHTTPSConnection(host, port, address, _remaining(deadline), tls)
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers={"Accept": "application/json", "Accept-Encoding": "identity",
                                        "User-Agent": "sd-webui-extension-index"})
            sock = connection.sock  # the response takes it over (connection.sock becomes None)
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
                url = urljoin(url, response.getheader("location"))
                continue
            if response.status != 200:
                raise ExtensionIndexError(f"{host} answered HTTP {response.status}")
            return _read_limited(response, sock, deadline)
        except (ssl.SSLError, ssl.CertificateError):
            raise ExtensionIndexError(f"{host}: the TLS connection failed (certificate not trusted?)") from None
        except TimeoutError:
            raise ExtensionIndexError(f"{host} did not answer within {TIMEOUT_SECONDS:.0f} s") from None
        except (OSError, http.client.HTTPException):
            raise ExtensionIndexError(f"could not read the index from {host}") from None
        finally:
            connection.close()
    raise ExtensionIndexError(f"more than {MAX_REDIRECTS} redirects")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_limited(response, sock: socket.socket, deadline: float) -> bytes:
    declared = response.getheader("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_INDEX_BYTES:
        raise ExtensionIndexError(f"the index is larger than {MAX_INDEX_BYTES // 2**20} MB")
    chunks, size = [], 0
    while True:
        if not response.isclosed():  # a trickling answer still ends at the overall deadline
            sock.settimeout(_remaining(deadline))
        chunk = response.read1(64 * 1024)  # whatever has arrived: read() would wait for all 64 KB
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_INDEX_BYTES:
            raise ExtensionIndexError(f"the index is larger than {MAX_INDEX_BYTES // 2**20} MB")
        chunks.append(chunk)


def _vetted_address(host: str, port: int, local: bool) -> str:
    """An address of `host` to connect to. Unless `local`, every address the name has must be a public one: a
    name with one private address among public ones is refused rather than tried."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ExtensionIndexError(f"cannot resolve {host}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ExtensionIndexError(f"cannot resolve {host}")
    if not local:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_global:
                raise ExtensionIndexError(f"{host} is an address on the server's own network; only public "
                                          "addresses are fetched while the server is reachable from other machines")
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to the address that was checked, not to whatever the name resolves to a moment later (a DNS
    answer can change between the check and the connection)."""

    def __init__(self, host: str, port: int, address: str, timeout: float, tls: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=tls)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
