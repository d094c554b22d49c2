"""Where the server can be reached: the port check before start-up and the addresses printed once it runs."""
from __future__ import annotations

import errno
import ipaddress
import socket


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on (host, port) now; checked as uvicorn binds (SO_REUSEADDR), so a port
    in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def network_addresses() -> list[str]:
    """This machine's IPv4 addresses that other machines can use (no loopback, no link-local), in order."""
    import psutil

    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET:
                ip = ipaddress.ip_address(address.address)
                if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                    found.add(ip)
    return [str(ip) for ip in sorted(found)]
