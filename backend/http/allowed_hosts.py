"""Which `Host` header values name this server: the defence against DNS rebinding.

A web page on rebind.example can have its DNS name point at 127.0.0.1 after it loaded; the browser then sends
the page's requests to this server as same-origin requests for "rebind.example". Such a request is recognised
by its Host: a name this server does not have. Loopback names and addresses always name it; a server reachable
from other machines (--listen) is also reached by IP address or by the machine's own names, and the operator
adds the names of proxies and DNS entries with --allowed-hosts (the share tunnel's host is added by app.py).
"""
from __future__ import annotations

import ipaddress
import re
import socket

LOOPBACK_NAMES = ("localhost", "*.localhost")  # browsers resolve *.localhost to loopback themselves (RFC 6761)
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_PORT = re.compile(r"^\d{1,5}$")


def host_name(value: str) -> str | None:
    """The name or address in a Host header value ("Example.com:7860" -> "example.com", "[::1]:80" -> "::1"),
    lower case, without a trailing dot; None when it is not a well-formed host."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or rest and not (rest.startswith(":") and _PORT.match(rest[1:])):
            return None
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name, colon, port = value.partition(":")
    if colon and not _PORT.match(port):
        return None
    name = name.removesuffix(".")
    return name if len(name) <= 253 and _NAME.match(name) else None


def ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    address = ip_address(name)
    if address is None:
        return name_matches(name, LOOPBACK_NAMES)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or bool(mapped and mapped.is_loopback)


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """`patterns` are names, or "*.example.com" for every name below example.com."""
    return any(name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])) for pattern in patterns)


def host_allowed(header: str | None, names: tuple[str, ...], any_address: bool, missing_ok: bool) -> bool:
    """True when the Host header names this server: loopback always, `names` (exact or "*.domain"), any IP
    address when `any_address` (rebinding always brings a DNS name, never an address), and no Host at all
    (HTTP/1.0) only when `missing_ok`."""
    if header is None or not header.strip():
        return missing_ok
    name = host_name(header)
    if name is None:
        return False
    if is_loopback(name) or name_matches(name, names):
        return True
    return any_address and ip_address(name) is not None


def machine_names() -> tuple[str, ...]:
    """This machine's own names, as a browser on the LAN might use them (hostname, its FQDN, its mDNS name)."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        name = host_name(name or "")
        if name and ip_address(name) is None:
            names.add(name)
            if "." not in name:
                names.add(f"{name}.local")
    return tuple(sorted(names))


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """--allowed-hosts "a.example,*.b.example" -> names; raises ValueError naming a malformed one."""
    names = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        wildcard = item.startswith("*.")
        name = host_name(item[2:] if wildcard else item)
        if name is None or (wildcard and ip_address(name) is not None):
            raise ValueError(f"'{item}' is not a host name (give names like sd.example.com or *.example.com, "
                             "without scheme or path)")
        names.append(f"*.{name}" if wildcard else name)
    return tuple(names)
