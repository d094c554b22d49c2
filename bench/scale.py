"""Scaling out: jobs/s of the same load with 1 and with 2 Ray workers, in one run.

What it measures: it starts `python app.py --api --device cpu --workers 1 --worker-threads 1` on a free port
(temporary models/outputs/cache folders: the built-in demo model), waits until the pool lists its worker as
started, warms it up until every worker has done a job (so no model load is measured), then sends a fixed
load -- `--clients` threads (default 4) sharing `--jobs` txt2img jobs (default 24; 64x64, `--steps` Euler steps,
distinct seeds) -- and takes jobs/s = jobs / seconds from the first request to the last answer. It stops that
server and does the same with `--workers 2` (or `--workers N`). It prints, per run, jobs/s, seconds per job and
the jobs each worker did (GET /sdapi/v1/workers, before and after the load), then the ratio of the two runs'
jobs/s against the target (PASS/FAIL line): on the 2-core build machine, 2 workers with one torch thread each
should reach at least 1.6x of one worker. The check also fails when a worker of the larger pool did no job of the
load, or when a run had errors.

Errors (a non-2xx answer, an answer without its image, a job the history database does not record as done, a
worker that never starts) are listed and make the exit code 1; the PASS/FAIL of the ratio does not (exit code 0
either way), as timings on a shared machine vary. Processes of a server that outlive it are reported and killed.

Run (from the repository root; on a quiet machine -- check `uptime` first):

    .venv/bin/python bench/scale.py                     # 1 vs 2 workers, 4 clients, 24 jobs
    .venv/bin/python bench/scale.py --steps 30 --jobs 40
    .venv/bin/python bench/scale.py --json scale.json   # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import (  # bench/common.py: the scripts run as files, so bench/ is on sys.path
    OwnServer,
    jobs_per_worker,
    wait_for_workers,
    warm_every_worker,
    worker_table,
)

TARGET_RATIO = 1.6
SERVER_START_TIMEOUT_S = 180
WORKERS_READY_TIMEOUT_S = 300  # Ray's start and the workers' processes
SERVER_STOP_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 600
ERRORS_SHOWN = 5
PROMPTS = ("a red circle on a blue background", "big white star, purple background",
           "a green triangle on a yellow background", "an orange square on a black background")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the second run (default 2; the first has 1)")
    parser.add_argument("--worker-threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    parser.add_argument("--clients", type=int, default=4, help="client threads sending the jobs (default 4)")
    parser.add_argument("--jobs", type=int, default=24, help="txt2img jobs measured per run (default 24)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per job (default 20)")
    parser.add_argument("--size", type=int, default=64, help="width and height of the images (default 64)")
    parser.add_argument("--target", type=float, default=TARGET_RATIO,
                        help=f"jobs/s of the larger pool over one worker's, at least (default {TARGET_RATIO})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the servers' temporary folders (they are always kept after an error)")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (the first run has 1)")
    if min(args.worker_threads, args.clients, args.jobs, args.steps, args.size) < 1:
        parser.error("--worker-threads, --clients, --jobs, --steps and --size must be at least 1")
    return args


@dataclass
class RunResult:
    workers: int
    jobs: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    per_worker: dict[str, int] = field(default_factory=dict)  # jobs each worker did during the load
    cold_workers: list[str] = field(default_factory=list)  # no warm-up job reached them
    errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # the server's processes that outlived it
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    @property
    def seconds_per_job(self) -> float:
        return self.seconds / self.jobs if self.jobs else 0.0

    def as_dict(self) -> dict:
        return {"workers": self.workers, "jobs": self.jobs, "seconds": round(self.seconds, 3),
                "jobs_per_s": round(self.jobs_per_s, 3), "latency_p50_s": percentile(self.latencies, 0.5),
                "latency_p95_s": percentile(self.latencies, 0.95), "jobs_per_worker": self.per_worker,
                "cold_workers": self.cold_workers, "errors": self.errors,
                "processes_left_after_stop": self.leftovers,
                "load_average_before": self.load_before, "load_average_after": self.load_after}


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile, rounded to ms; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)


def txt2img_body(args: argparse.Namespace, task_id: str, number: int) -> dict:
    return {"prompt": PROMPTS[number % len(PROMPTS)], "width": args.size, "height": args.size, "steps": args.steps,
            "seed": 1000 + number, "sampler_name": "Euler", "save_images": True, "force_task_id": task_id}


# ---------------------------------------------------------------- the load

def send_jobs(base_url: str, args: argparse.Namespace, run_tag: str, result: RunResult) -> list[str]:
    """`args.jobs` txt2img jobs from `args.clients` threads, each taking the next job when its last one answered;
    fills in the seconds, latencies and errors of `result`; the ids of the jobs that were answered with an image."""
    numbers = iter(range(args.jobs))
    lock = threading.Lock()
    answered: list[str] = []

    def client():
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    return
                task_id = f"{run_tag}-{number}"
                started = time.perf_counter()
                try:
                    response = http.post("/sdapi/v1/txt2img", json=txt2img_body(args, task_id, number))
                except httpx.HTTPError as error:
                    problem = f"{task_id}: transport error {type(error).__name__}: {error}"
                else:
                    problem = answer_problem(task_id, response)
                with lock:
                    result.latencies.append(time.perf_counter() - started)
                    if problem:
                        result.errors.append(problem)
                    else:
                        answered.append(task_id)

    threads = [threading.Thread(target=client, name=f"client-{index}", daemon=True) for index in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    result.jobs = args.jobs
    return answered


def answer_problem(task_id: str, response: httpx.Response) -> str | None:
    if not response.is_success:
        return f"{task_id}: HTTP {response.status_code}: {response.text[:300]}"
    images = response.json().get("images") or []
    if len(images) != 1:
        return f"{task_id}: the answer has {len(images)} images, expected 1"
    return None


def history_problems(server: OwnServer, task_ids: list[str]) -> list[str]:
    """Jobs the server's history database does not record as done (read-only, with plain sqlite3)."""
    with sqlite3.connect(f"file:{server.history_db}?mode=ro", uri=True) as db:
        statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    return [f"{task_id}: history.sqlite3 has status {statuses.get(task_id)!r}"
            for task_id in task_ids if statuses.get(task_id) != "done"]


# ---------------------------------------------------------------- one server, one pool size

def run_pool(args: argparse.Namespace, workers: int, keep: list[OwnServer]) -> RunResult:
    """Start a server with `workers` workers, warm each, measure the load, stop it."""
    result = RunResult(workers=workers)
    server = OwnServer(f"bench-scale-{workers}w-",
                       ("--workers", str(workers), "--worker-threads", str(args.worker_threads)))
    run_tag = f"scale-{uuid.uuid4().hex[:8]}"
    try:
        print(f"\n{workers} worker(s): starting the server on {server.url} (folder {server.workdir}) ...", flush=True)
        server.start(SERVER_START_TIMEOUT_S)
        wait_for_workers(server.url, workers, WORKERS_READY_TIMEOUT_S, server.log_tail)
        server.remember_descendants()
        print("warming up every worker (loads the model) ...", flush=True)
        result.cold_workers = warm_every_worker(
            server.url, lambda number: txt2img_body(args, f"{run_tag}-warmup-{number}", number), REQUEST_TIMEOUT_S)
        before = worker_table(server.url)
        result.load_before = round(os.getloadavg()[0], 2)
        print(f"{args.clients} clients, {args.jobs} jobs ...", flush=True)
        answered = send_jobs(server.url, args, run_tag, result)
        result.load_after = round(os.getloadavg()[0], 2)
        result.per_worker = jobs_per_worker(before, worker_table(server.url))
        result.errors += history_problems(server, answered)
    except SystemExit as setup_problem:  # the server or a worker did not start: an error of this run
        result.errors.append(str(setup_problem))
    except httpx.HTTPError as error:  # e.g. GET /sdapi/v1/workers refused
        result.errors.append(f"{type(error).__name__}: {error}\n{server.log_tail()}")
    finally:
        result.leftovers = server.stop(SERVER_STOP_TIMEOUT_S)
        if result.errors or args.keep_workdir:
            keep.append(server)
        else:
            server.remove_workdir()
    print_run(result)
    return result


# ---------------------------------------------------------------- the report

def print_run(result: RunResult):
    if result.seconds:
        print(f"{result.workers} worker(s): {result.jobs} jobs in {result.seconds:.2f} s = {result.jobs_per_s:.3f} "
              f"jobs/s ({result.seconds_per_job:.3f} s a job; latency p50 {percentile(result.latencies, 0.5)} s, "
              f"p95 {percentile(result.latencies, 0.95)} s; load average {result.load_before} -> "
              f"{result.load_after})")
    if result.per_worker:
        print("  jobs per worker: " + ", ".join(f"{worker} {jobs}" for worker, jobs in result.per_worker.items()))
    if result.cold_workers:
        print(f"  warning: no warm-up job reached {', '.join(result.cold_workers)} (its model load was measured)")
    for error in result.errors[:ERRORS_SHOWN]:
        print(f"  error: {error}")
    if len(result.errors) > ERRORS_SHOWN:
        print(f"  ... and {len(result.errors) - ERRORS_SHOWN} more errors")
    if result.leftovers:
        print(f"  problem: {len(result.leftovers)} of the server's processes outlived it (now killed):")
        for line in result.leftovers[:ERRORS_SHOWN]:
            print(f"    {line}")


def verdict(one: RunResult, many: RunResult, target: float) -> tuple[float | None, list[str]]:
    """The ratio jobs/s many/one and what misses the target (empty = PASS)."""
    ratio = many.jobs_per_s / one.jobs_per_s if one.jobs_per_s and many.jobs_per_s else None
    misses = []
    errors = len(one.errors) + len(many.errors)
    if errors:
        misses.append(f"{errors} errors (the numbers do not count)")
    if ratio is None:
        misses.append("no ratio (a run did not finish)")
    elif ratio < target:
        misses.append(f"ratio {ratio:.2f} < {target:g}")
    idle = [worker for worker, jobs in many.per_worker.items() if jobs < 1]
    if idle:
        misses.append(f"worker(s) {', '.join(idle)} did no job of the load")
    if many.per_worker and len(many.per_worker) < many.workers:
        misses.append(f"the pool lists {len(many.per_worker)} workers, not {many.workers}")
    return ratio, misses


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM gets the same clean shutdown as Ctrl-C


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    print(f"{args.clients} clients, {args.jobs} txt2img jobs of {args.size}x{args.size}, {args.steps} steps, "
          f"{args.worker_threads} torch thread(s) per worker; {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    kept: list[OwnServer] = []
    try:
        one = run_pool(args, 1, kept)
        many = run_pool(args, args.workers, kept)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        for server in kept:
            print(f"server folder kept: {server.workdir} (log: {server.log_path})")
    ratio, misses = verdict(one, many, args.target)
    print(f"\njobs/s: 1 worker {one.jobs_per_s:.3f}, {args.workers} workers {many.jobs_per_s:.3f}; ratio "
          f"{'-' if ratio is None else f'{ratio:.2f}'}x (target >= {args.target:g}x)")
    print("PASS" if not misses else f"FAIL: {'; '.join(misses)}")
    errors = one.errors + many.errors
    if args.json:
        args.json.write_text(json.dumps({
            "clients": args.clients, "jobs": args.jobs, "steps": args.steps, "size": args.size,
            "worker_threads": args.worker_threads, "cpu_cores": os.cpu_count(), "runs": [one.as_dict(), many.as_dict()],
            "ratio": None if ratio is None else round(ratio, 3), "target": args.target, "passed": not misses,
            "errors": len(errors)}, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
