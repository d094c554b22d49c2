"""Small pieces the bench scripts share."""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


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


class OwnServer:
    """`python app.py --api --device cpu` on a free port in a temporary folder of its own (an empty models folder:
    the built-in demo model), started in a session of its own so Ctrl-C reaches only the bench script, which then
    stops the server in order (and can kill the whole group if it hangs)."""

    def __init__(self, prefix: str, extra_args: tuple[str, ...] = ()):
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.outputs = self.workdir / "outputs"
        self.log_path = self.workdir / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self._descendants: list[psutil.Process] = []

    @property
    def history_db(self) -> Path:
        return self.outputs / "history.sqlite3"

    def start(self, timeout: float):
        (self.workdir / "models").mkdir()
        command = [sys.executable, "app.py", "--api", "--port", str(self.port), "--device", "cpu",
                   "--outputs-dir", str(self.outputs), "--cache-dir", str(self.workdir / "cache"),
                   "--models-dir", str(self.workdir / "models"), *self.extra_args]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        self._wait_until_up(timeout)

    def _wait_until_up(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server did not answer within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def remember_descendants(self):
        """Note the server's child processes now (Ray's processes and worker actors, for instance), so `stop` can
        tell whether any outlived the server."""
        try:
            self._descendants = psutil.Process(self.process.pid).children(recursive=True)
        except (psutil.NoSuchProcess, AttributeError):
            self._descendants = []

    def stop(self, timeout: float) -> list[str]:
        """Stop the server; the processes it had started (as last noted) that were still running after it
        stopped, each described and then killed by its id. Not empty = the server does not clean up after itself."""
        stop_process(self.process, timeout)
        _, alive = psutil.wait_procs(self._descendants, timeout=min(timeout, 10))
        leftovers = []
        for member in alive:
            try:
                leftovers.append(f"{member.pid} {' '.join(member.cmdline())[:120]}")
                member.kill()
            except psutil.NoSuchProcess:
                pass
        return leftovers

    def remove_workdir(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


def worker_table(base_url: str) -> list[dict]:
    """GET /sdapi/v1/workers: one object per generation worker (id, state, jobs_done, model_loads, ...)."""
    response = httpx.get(base_url + "/sdapi/v1/workers", timeout=30)
    response.raise_for_status()
    return response.json()


def wait_for_workers(base_url: str, count: int, timeout: float, log_tail=lambda: "") -> list[dict]:
    """Wait until the server lists `count` workers, all started (idle or busy); the worker table then. A worker
    that failed to start, or a pool not ready within `timeout`, stops the run (a setup problem)."""
    deadline = time.monotonic() + timeout
    workers: list[dict] = []
    while time.monotonic() < deadline:
        workers = worker_table(base_url)
        failed = [worker["id"] for worker in workers if worker.get("state") == "failed"]
        if failed:
            raise SystemExit(f"worker(s) {', '.join(failed)} failed to start:\n{log_tail()}")
        if len(workers) >= count and all(worker.get("state") in ("idle", "busy") for worker in workers):
            return workers
        time.sleep(0.5)
    states = ", ".join(f"{worker.get('id')}: {worker.get('state')}" for worker in workers) or "none listed"
    raise SystemExit(f"{count} workers were not ready within {timeout:g} s ({states}):\n{log_tail()}")


def warm_every_worker(base_url: str, make_body, timeout: float, rounds: int = 4, per_worker: int = 4) -> list[str]:
    """Give every worker of the pool at least one txt2img job, so the model loads happen before any clock starts:
    rounds of `per_worker` simultaneous jobs per worker until each has done one. (One job per worker is not enough:
    the pool keeps a job waiting for a busy worker that holds its checkpoint until a few are queued for it, rather
    than load the checkpoint on a second worker.) `make_body(number)` builds a /sdapi/v1/txt2img body. The ids of
    the workers still without a job after `rounds` (empty when all got one); a failed warm-up job stops the run."""
    numbers = itertools.count()
    cold: list[str] = []
    for _ in range(rounds):
        workers = worker_table(base_url)
        cold = [worker["id"] for worker in workers if not worker.get("jobs_done")]
        if not cold:
            return []
        bodies = [make_body(next(numbers)) for _ in range(per_worker * len(workers))]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(
                lambda body: httpx.post(base_url + "/sdapi/v1/txt2img", json=body, timeout=timeout), bodies))
        for response in responses:
            if not response.is_success:
                raise SystemExit(f"warm-up txt2img failed: HTTP {response.status_code}: {response.text[:500]}")
    return [worker["id"] for worker in worker_table(base_url) if not worker.get("jobs_done")]


def jobs_per_worker(before: list[dict], after: list[dict]) -> dict[str, int]:
    """Jobs each worker finished between two worker tables (a worker new in `after` counts from 0)."""
    done_before = {worker["id"]: worker.get("jobs_done", 0) for worker in before}
    return {worker["id"]: worker.get("jobs_done", 0) - done_before.get(worker["id"], 0) for worker in after}
