"""What a real `python app.py` prints at start: one line when the port is taken, our flags instead of Gradio's
launch() advice, and with --listen the addresses a person can open."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from backend.http.server_addresses import network_addresses
from tests.server_process import ROOT, ServerProcess


def test_port_in_use_is_one_line_naming_the_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        finished = subprocess.run(
            [sys.executable, "app.py", "--port", str(port), "--models-dir", str(tmp_path / "models"),
             "--outputs-dir", str(tmp_path / "outputs"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert finished.returncode != 0
    lines = (finished.stdout + finished.stderr).strip().splitlines()
    assert lines == [f"Port {port} is already in use (is the WebUI already running?); start with --port N to use "
                     "another port"]
    assert time.monotonic() - started < 60  # refused before the models are scanned and the page is built
    assert not (tmp_path / "outputs").exists()


def test_start_up_names_our_flags_not_gradios_launch_arguments(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir).start()
    server.stop()
    log = server.log_path.read_text()
    assert f"Running on local URL:  http://127.0.0.1:{server.port}" in log
    assert "To create a public link, start with --share." in log
    assert "share=True" not in log and "launch()" not in log and "0.0.0.0" not in log


def test_listen_prints_the_addresses_a_person_can_open(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir, "--listen").start()
    server.stop()
    log = server.log_path.read_text()
    assert f"Running on local URL:  http://127.0.0.1:{server.port}" in log
    for address in network_addresses():
        assert f"Running on network URL:  http://{address}:{server.port}" in log
    assert "0.0.0.0" not in log and "share=True" not in log


def test_network_addresses_are_usable_ipv4_addresses():
    import ipaddress

    import psutil

    expected = {a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                if a.family == socket.AF_INET and not a.address.startswith(("127.", "169.254."))}
    found = network_addresses()
    assert set(found) == expected
    assert all(ipaddress.ip_address(address).version == 4 for address in found)
