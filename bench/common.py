"""Small pieces the bench scripts share."""
from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process, timeout: float):
    """Ask a server process (started in its own session) to stop; kill its whole group if it does not."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
