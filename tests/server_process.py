"""Start `python app.py` as a real server process for HTTP and browser tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, workdir: Path, models_dir: Path, *extra_args: str):
        self.workdir = Path(workdir)
        self.models_dir = models_dir
        self.outputs = self.workdir / "outputs"
        self.extra_args = extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> ServerProcess:
        """Start and wait for HTTP 200. A process that dies at once (for example because another process
        took the port between free_port() and its bind) is retried once on a new port."""
        failures = []
        for _ in range(2):
            if self._start_once(timeout):
                return self
            failures.append(f"exit code {self.process.returncode}:\n{self.log_path.read_text()}")
            self.stop()
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("server did not start:\n" + "\n---\n".join(failures))

    def _start_once(self, timeout: float) -> bool:
        self.log_path = self.workdir / f"server-{self.port}-{time.time():.0f}.log"
        log = open(self.log_path, "w")  # noqa: SIM115 (the server writes to it for its whole life)
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(self.port), "--models-dir", str(self.models_dir),
             "--outputs-dir", str(self.outputs), "--cache-dir", str(self.workdir / "cache"), "--device", "cpu",
             *self.extra_args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self._environment())
        # Another test's server may take the port between free_port() and our bind and answer in our place:
        # only our own process's word that it serves this port counts.
        serving = f"Running on local URL:  {self.url}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if serving in self.log_path.read_text() and \
                        urllib.request.urlopen(self.url + "/", timeout=2).status == 200:
                    return self.process.poll() is None
            except OSError:
                pass
            time.sleep(0.25)
        return False

    @staticmethod
    def _environment() -> dict[str, str]:
        """This process's environment, less what an in-process server of another test set for itself (its upload
        folder, its trusted proxies): each server process starts as a fresh one would."""
        inherited = {k: v for k, v in os.environ.items() if k not in ("GRADIO_TEMP_DIR", "FORWARDED_ALLOW_IPS")}
        return {**inherited, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def kill(self):
        """SIGKILL: the process gets no chance to clean up, as in a crash or power loss."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def shared_models_dir(root: Path, checkpoint_files: dict[str, Path]) -> Path:
    """An A1111-style models folder with the two tiny SD1 checkpoints (hard links), for a module's shared server."""
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], models / "Stable-diffusion" / checkpoint_files[key].name)
    return models


class SharedServer:
    """One server process for a module's tests (each start costs seconds of CPU). Each test calls `mark` when it
    begins (a function-scoped fixture does) and reads only its own images with `made`."""

    def __init__(self, process: ServerProcess, models: Path):
        self.process, self.url, self.outputs, self.models = process, process.url, process.outputs, models
        self._before: set[Path] = set()

    def mark(self) -> SharedServer:
        self._before = set(self.outputs.rglob("*.png"))
        return self

    def made(self, pattern: str) -> list[Path]:
        """The images matching `pattern` under outputs (e.g. "txt2img-images/*/*.png") written since `mark`,
        oldest name first."""
        return sorted(path for path in self.outputs.glob(pattern) if path not in self._before)
