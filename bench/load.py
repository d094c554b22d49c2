"""Load test of the REST API: many clients at once, nothing may fail and no job may go missing.

What it measures: N client threads (default 16) send a mix of calls over loopback for a bounded time --
POST /sdapi/v1/txt2img (64x64, few steps), POST /sdapi/v1/img2img (a small init image, denoising 0.5),
POST /sdapi/v1/extra-single-image (upscale with a built-in upscaler) and GET /sdapi/v1/progress between
them -- and reports:

- requests per kind, and errors (any non-2xx answer or transport error; must be 0);
- jobs lost (must be 0): a txt2img/img2img request whose 2xx answer lacks its image, whose force_task_id the
  server does not report as done right after it answered, whose request got no answer at all and the server
  does not know it finished, or which the history database (<outputs>/history.sqlite3) does not record as
  done at the end (only when this script started the server: with --url that check is skipped); an upscale
  whose 2xx answer lacks its image counts as lost too;
- latency p50/p95 per kind and overall (seconds) and throughput (requests/s, and jobs/s: txt2img + img2img +
  upscale calls);
- the server's peak memory (RSS of the server process and its children, sampled every 0.2 s);
- with `--workers N` (a Ray worker pool, see the README's "Scaling out"): the jobs each worker did during the
  load (GET /sdapi/v1/workers), and any process of the server's that outlived it.

It ends with PASS (errors == 0 and jobs lost == 0) or FAIL; the exit code is 1 on FAIL.

By default it starts its own server (`python app.py --api --device cpu` on a free port, with empty temporary
models/outputs/cache folders, so the built-in demo model is used) and stops it at the end, also on Ctrl-C.
`--workers N` (and `--worker-threads N`) are passed on to it; it then waits until the pool lists its workers as
started and gives each worker a job before the clock starts, so no model load is counted as latency.

Run (from the repository root):

    .venv/bin/python bench/load.py                          # 16 clients, 60 s, own server
    .venv/bin/python bench/load.py --clients 4 --duration 20
    .venv/bin/python bench/load.py --workers 2 --clients 16 --duration 30   # a Ray pool of 2 workers
    .venv/bin/python bench/load.py --url http://127.0.0.1:7860 --server-pid 1234   # a running server (--api)
    .venv/bin/python bench/load.py --json results.json      # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import math
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from common import (  # bench/common.py: the scripts run as files, so bench/ is on sys.path
    OwnServer,
    jobs_per_worker,
    wait_for_workers,
    warm_every_worker,
    worker_table,
)
from PIL import Image

KINDS = ("txt2img", "img2img", "upscale", "progress")
GENERATION_KINDS = ("txt2img", "img2img")
REQUEST_TIMEOUT_S = 600  # jobs run one at a time per worker, so a request may wait behind every other client's job
SERVER_START_TIMEOUT_S = 180
WORKERS_READY_TIMEOUT_S = 300  # Ray's start and each worker's first model load
SERVER_STOP_TIMEOUT_S = 30
MEMORY_SAMPLE_INTERVAL_S = 0.2
ERRORS_SHOWN = 5
PROMPTS = ("a red circle on a blue background", "big white star, purple background",
           "a green triangle on a yellow background", "an orange square on a black background")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--duration", type=float, default=60, help="seconds the clients keep sending (default 60)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of txt2img/img2img (default 4)")
    parser.add_argument("--upscaler", default="Lanczos", help="upscaler for extra-single-image (default Lanczos)")
    parser.add_argument("--url", help="test this running server (started with --api) instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, for its peak memory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the own server's temporary folder (it is always kept on FAIL)")
    parser.add_argument("--workers", metavar="N|auto",
                        help="start the own server with a Ray worker pool of N workers (app.py --workers)")
    parser.add_argument("--worker-threads", type=int, metavar="N",
                        help="with --workers: torch CPU threads per worker (default: CPU cores / workers)")
    args = parser.parse_args(argv)
    if args.url and (args.workers or args.worker_threads):
        parser.error("--workers and --worker-threads are for the server this script starts, not with --url")
    if args.worker_threads is not None and not args.workers:
        parser.error("--worker-threads needs --workers")
    return args


def server_flags(args: argparse.Namespace) -> tuple[str, ...]:
    flags = ("--workers", args.workers) if args.workers else ()
    if args.worker_threads is not None:
        flags += ("--worker-threads", str(args.worker_threads))
    return flags


# ---------------------------------------------------------------- the server under test

class PeakMemorySampler(threading.Thread):
    """Highest RSS seen of a process plus all its children (workers a server may spawn count too)."""

    def __init__(self, pid: int):
        super().__init__(name="memory-sampler", daemon=True)
        self.pid = pid
        self.peak_bytes = 0
        self._stop_event = threading.Event()

    def run(self):
        try:
            process = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.wait(MEMORY_SAMPLE_INTERVAL_S):
            self.peak_bytes = max(self.peak_bytes, tree_rss(process))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_bytes


def tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        for member in [process, *process.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:  # a child that just exited
                pass
    except psutil.NoSuchProcess:
        pass
    return total


# ---------------------------------------------------------------- the requests

def png_base64(size: int, colour: tuple[int, int, int]) -> str:
    image = Image.new("RGB", (size, size), colour)
    image.paste((255, 255, 255), (size // 4, size // 4, size * 3 // 4, size * 3 // 4))  # some edges to upscale
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class Workload:
    steps: int
    upscaler: str
    init_image: str = field(default_factory=lambda: png_base64(64, (30, 60, 200)))
    upscale_source: str = field(default_factory=lambda: png_base64(64, (200, 60, 30)))

    def txt2img(self, task_id: str, number: int) -> dict:
        return {"prompt": PROMPTS[number % len(PROMPTS)], "width": 64, "height": 64, "steps": self.steps,
                "seed": number, "sampler_name": "Euler", "save_images": True, "force_task_id": task_id}

    def img2img(self, task_id: str, number: int) -> dict:
        return self.txt2img(task_id, number) | {"init_images": [self.init_image], "denoising_strength": 0.5}

    def upscale(self) -> dict:
        return {"image": self.upscale_source, "upscaler_1": self.upscaler, "upscaling_resize": 2}


ENDPOINTS = {"txt2img": "/sdapi/v1/txt2img", "img2img": "/sdapi/v1/img2img",
             "upscale": "/sdapi/v1/extra-single-image"}


# ---------------------------------------------------------------- counting

class Results:
    """What all clients saw; one lock, as every client thread writes here."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.requests: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_samples: list[str] = []
        self.lost: list[str] = []  # "task id: why"
        self.accepted_jobs: list[str] = []  # generation ids the server answered 2xx for
        self.unanswered_jobs: list[str] = []  # generation ids whose request got no HTTP answer

    def record(self, kind: str, seconds: float, error: str | None):
        with self._lock:
            self.requests[kind] += 1
            self.latencies[kind].append(seconds)
            if error:
                self.errors[kind] += 1
                if len(self.error_samples) < ERRORS_SHOWN:
                    self.error_samples.append(f"{kind}: {error}")

    def job_lost(self, task_id: str, why: str):
        with self._lock:
            self.lost.append(f"{task_id}: {why}")

    def job_accepted(self, task_id: str):
        with self._lock:
            self.accepted_jobs.append(task_id)

    def job_unanswered(self, task_id: str):
        with self._lock:
            self.unanswered_jobs.append(task_id)


def timed_call(client: httpx.Client, results: Results, kind: str, method: str, path: str,
               body: dict | None = None, params: dict | None = None) -> httpx.Response | None:
    """One request, recorded; None when no HTTP answer came back at all."""
    started = time.perf_counter()
    try:
        response = client.request(method, path, json=body, params=params)
    except httpx.HTTPError as error:
        results.record(kind, time.perf_counter() - started, f"transport error {type(error).__name__}: {error}")
        return None
    error = None if response.is_success else f"HTTP {response.status_code}: {response.text[:300]}"
    results.record(kind, time.perf_counter() - started, error)
    return response


def finished_job_problem(client: httpx.Client, results: Results, task_id: str) -> str | None:
    """Why the server does not report this job as done (None when it does), asked through the progress API
    as A1111 clients do."""
    response = timed_call(client, results, "progress", "GET", "/sdapi/v1/progress", params={"id_task": task_id})
    if response is None or not response.is_success:
        return f"progress?id_task answered {response.status_code if response is not None else 'nothing'}"
    answer = response.json()
    if answer.get("status") != "done" or answer.get("progress") != 1.0:
        return f"progress says status={answer.get('status')} progress={answer.get('progress')}"
    return None


def generate(client: httpx.Client, results: Results, kind: str, body: dict):
    """A txt2img/img2img request, then the checks that its job really finished."""
    task_id = body["force_task_id"]
    response = timed_call(client, results, kind, "POST", ENDPOINTS[kind], body)
    if response is None:
        results.job_unanswered(task_id)  # the job may still have run: decided after the run
        return
    if not response.is_success:
        return  # an error, counted as such: the server answered, so nothing went missing silently
    images = response.json().get("images") or []
    if len(images) != 1:
        results.job_lost(task_id, f"answer has {len(images)} images, expected 1")
    problem = finished_job_problem(client, results, task_id)
    if problem:
        results.job_lost(task_id, problem)
    results.job_accepted(task_id)


def upscale(client: httpx.Client, results: Results, workload: Workload):
    response = timed_call(client, results, "upscale", "POST", ENDPOINTS["upscale"], workload.upscale())
    if response is not None and response.is_success and not response.json().get("image"):
        results.job_lost("upscale", "answer has no image")


def client_loop(base_url: str, workload: Workload, results: Results, run_tag: str, client_number: int,
                stop: threading.Event):
    """txt2img, img2img, upscale in turn, a progress poll between them (as a UI polls), until told to stop;
    a request already sent is always waited for, so nothing is in flight when the counting starts."""
    calls = itertools.cycle(("txt2img", "img2img", "upscale"))
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for number in itertools.count():
            if stop.is_set():
                return
            kind = next(calls)
            if kind == "upscale":
                upscale(client, results, workload)
            else:
                task_id = f"{run_tag}-c{client_number}-{number}"
                make_body = workload.txt2img if kind == "txt2img" else workload.img2img
                generate(client, results, kind, make_body(task_id, number))
            timed_call(client, results, "progress", "GET", "/sdapi/v1/progress")


# ---------------------------------------------------------------- after the run

def account_for_unanswered(base_url: str, results: Results):
    """A request that got no answer is lost unless the server knows its job finished."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for task_id in results.unanswered_jobs:
            problem = finished_job_problem(client, results, task_id)
            if problem:
                results.job_lost(task_id, f"no answer, and {problem}")


def check_history(db_path: Path, results: Results):
    """Every accepted job must be in the server's durable history as done. Read-only, with plain sqlite3, so
    this script needs nothing from backend/ and cannot change the server's database."""
    if not results.accepted_jobs:
        return
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    for task_id in results.accepted_jobs:
        if statuses.get(task_id) != "done":
            results.job_lost(task_id, f"history.sqlite3 has status {statuses.get(task_id)!r}")


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(results: Results, args: argparse.Namespace, seconds: float, peak_rss: int | None) -> dict:
    all_latencies = [value for kind in KINDS for value in results.latencies[kind]]
    kinds = {kind: {"requests": results.requests[kind], "errors": results.errors[kind],
                    "p50_s": percentile(results.latencies[kind], 0.50),
                    "p95_s": percentile(results.latencies[kind], 0.95)} for kind in KINDS}
    total_requests = sum(results.requests.values())
    total_errors = sum(results.errors.values())
    return {
        "clients": args.clients, "duration_s": args.duration, "steps": args.steps, "upscaler": args.upscaler,
        "elapsed_s": round(seconds, 2), "requests": total_requests, "errors": total_errors,
        "jobs_lost": len(results.lost), "generation_jobs": len(results.accepted_jobs),
        "p50_s": percentile(all_latencies, 0.50), "p95_s": percentile(all_latencies, 0.95),
        "throughput_rps": round(total_requests / seconds, 2) if seconds else None,
        "jobs_per_s": round(sum(results.requests[kind] for kind in ENDPOINTS) / seconds, 2) if seconds else None,
        "server_peak_rss_mb": round(peak_rss / 2**20, 1) if peak_rss else None,
        "kinds": kinds, "passed": total_errors == 0 and not results.lost,
    }


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(numbers: dict, results: Results):
    print(f"\n{numbers['clients']} clients, {numbers['duration_s']:g} s of load, {numbers['elapsed_s']} s "
          f"until every request had its answer")
    print(f"{'kind':<10} {'requests':>9} {'errors':>7} {'p50 s':>8} {'p95 s':>8}")
    for kind, row in numbers["kinds"].items():
        print(f"{kind:<10} {row['requests']:>9} {row['errors']:>7} {seconds_text(row['p50_s']):>8} "
              f"{seconds_text(row['p95_s']):>8}")
    print(f"{'all':<10} {numbers['requests']:>9} {numbers['errors']:>7} {seconds_text(numbers['p50_s']):>8} "
          f"{seconds_text(numbers['p95_s']):>8}")
    peak = numbers["server_peak_rss_mb"]
    print(f"throughput {numbers['throughput_rps']} requests/s ({numbers['jobs_per_s']} jobs/s); "
          f"generation jobs checked {numbers['generation_jobs']}; jobs lost {numbers['jobs_lost']}; "
          f"server peak RSS {'n/a' if peak is None else f'{peak} MB'}")
    for sample in results.error_samples:
        print(f"  error: {sample}")
    for lost in results.lost[:ERRORS_SHOWN]:
        print(f"  lost: {lost}")
    if "workers" in numbers:
        print("jobs per worker during the load: " + ", ".join(
            f"{worker_id} {jobs}" for worker_id, jobs in numbers["workers"].items()))
    verdict = "PASS" if numbers["passed"] else "FAIL"
    print(f"{verdict}: errors {numbers['errors']} (must be 0), jobs lost {numbers['jobs_lost']} (must be 0)")


# ---------------------------------------------------------------- the run

def check_upscaler(base_url: str, name: str):
    names = [item["name"] for item in httpx.get(base_url + "/sdapi/v1/upscalers", timeout=60).json()]
    if name not in names:
        raise SystemExit(f"--upscaler {name!r} is not offered by the server; it has: {', '.join(names)}")


def warm_up(base_url: str, workload: Workload, run_tag: str):
    """One call of each kind before the clock starts, so the first model load is not counted as latency;
    a failure here is a setup problem and stops the run."""
    bodies = {"txt2img": workload.txt2img(f"{run_tag}-warmup-t", 0),
              "img2img": workload.img2img(f"{run_tag}-warmup-i", 0), "upscale": workload.upscale()}
    for kind, body in bodies.items():
        response = httpx.post(base_url + ENDPOINTS[kind], json=body, timeout=REQUEST_TIMEOUT_S)
        if not response.is_success:
            raise SystemExit(f"warm-up {kind} failed: HTTP {response.status_code}: {response.text[:500]}")


def run_clients(base_url: str, workload: Workload, results: Results, clients: int, duration: float) -> float:
    """Start the clients, stop them after `duration`, wait for their last answers; the seconds it took."""
    stop = threading.Event()
    run_tag = f"bench-{uuid.uuid4().hex[:8]}"
    threads = [threading.Thread(target=client_loop, name=f"client-{number}", daemon=True,
                                args=(base_url, workload, results, run_tag, number, stop))
               for number in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        stop.wait(duration)
    finally:
        stop.set()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def measure(base_url: str, args: argparse.Namespace, server: OwnServer | None) -> dict:
    server_pid = server.process.pid if server else args.server_pid
    # Sampled from before the model load on: the server's peak over its whole life is what a user must have.
    sampler = PeakMemorySampler(server_pid) if server_pid else None
    if sampler:
        sampler.start()
    workload = Workload(steps=args.steps, upscaler=args.upscaler)
    check_upscaler(base_url, args.upscaler)
    warm_up_tag = f"bench-{uuid.uuid4().hex[:8]}"
    if args.workers:
        count = int(args.workers) if args.workers.isdigit() else 1
        print(f"waiting for the worker pool ({args.workers}) ...", flush=True)
        wait_for_workers(base_url, count, WORKERS_READY_TIMEOUT_S, server.log_tail)
        server.remember_descendants()
        print("warming up every worker (loads the model) ...", flush=True)
        cold = warm_every_worker(base_url, lambda number: workload.txt2img(f"{warm_up_tag}-w{number}", number),
                                 REQUEST_TIMEOUT_S)
        if cold:
            print(f"warning: no warm-up job reached {', '.join(cold)}: its model load falls into the load",
                  flush=True)
    print("warming up (loads the model) ...", flush=True)
    warm_up(base_url, workload, warm_up_tag)
    workers_before = worker_table(base_url) if args.workers else []
    results = Results()
    print(f"{args.clients} clients for {args.duration:g} s ...", flush=True)
    seconds = run_clients(base_url, workload, results, args.clients, args.duration)
    account_for_unanswered(base_url, results)
    if server is not None:
        check_history(server.history_db, results)
    peak_rss = sampler.stop() if sampler else None
    numbers = summary(results, args, seconds, peak_rss)
    if args.workers:
        numbers["workers"] = jobs_per_worker(workers_before, worker_table(base_url))
    print_report(numbers, results)
    return numbers


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM gets the same clean shutdown as Ctrl-C


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    server = None if args.url else OwnServer("bench-load-", server_flags(args))
    passed = False
    numbers = {}
    try:
        if server:
            print(f"starting the server on {server.url} (folder {server.workdir}) ...", flush=True)
            server.start(SERVER_START_TIMEOUT_S)
        base_url = (args.url or server.url).rstrip("/")
        numbers = measure(base_url, args, server)
        passed = numbers["passed"]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if server:
            leftovers = server.stop(SERVER_STOP_TIMEOUT_S)
            if leftovers:
                numbers["processes_left_after_stop"] = leftovers
                print(f"warning: {len(leftovers)} of the server's processes outlived it (now killed):")
                for line in leftovers[:ERRORS_SHOWN]:
                    print(f"  {line}")
        if args.json and numbers:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        if server:
            if passed and not args.keep_workdir:
                server.remove_workdir()
            else:
                print(f"server folder kept: {server.workdir} (log: {server.log_path})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
