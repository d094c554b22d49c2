"""Start-up time: seconds from `python app.py` to the page answering, and to the first image.

What it measures, per run: it launches `python app.py --api --device cpu` on a free port with an empty
temporary models folder (so the built-in demo model is used) and

- page: seconds from launching the process until GET / answers HTTP 200 (polled every 50 ms);
- first image: seconds from launching until a small POST /sdapi/v1/txt2img (64x64, 8 steps, Euler), sent as
  soon as the page answered, returns its image -- what a user or an API client waits for;
- from the server's log (timestamped lines): when it printed its first line and when the first model was
  loaded ("ready"), also counted from the launch.

Each run uses a fresh cache folder (hashes, upscaler list: what a first start must compute), or with
`--warm-cache` one cache folder for all runs (run 1 fills it and is left out of the median). It prints each
run, the medians, the system load average (with a note when other programs kept the machine busy) and PASS/FAIL
against the target: the page answers in under 8 s (a 2-core machine). The exit code is 0 either way; read the
PASS/FAIL line.

`--profile` adds one more start, under `python -X importtime`, and prints what stands between the launch and the
page: the imports of app.py's own modules (top level, cumulative), the heaviest packages wherever they were
first imported, and the server's log lines with their time since the launch. (-X importtime itself slows
imports a little; compare its numbers with each other, not with the timed runs.)

Run (from the repository root):

    .venv/bin/python bench/startup.py                  # 3 runs, fresh cache each time
    .venv/bin/python bench/startup.py --runs 5 --warm-cache
    .venv/bin/python bench/startup.py --profile        # also: where the start-up time goes
    .venv/bin/python bench/startup.py --json startup.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from common import free_port, stop_process  # bench/common.py: the scripts run as files, so bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
TARGET_PAGE_S = 8.0
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.05
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")  # app.py's logging format: asctime first
IMPORT_TIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
TOP_IMPORTS = 12


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed starts (default 3)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="one cache folder for all runs (run 1 fills it and is left out of the median)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the first image (default 8)")
    parser.add_argument("--profile", action="store_true",
                        help="one more start under -X importtime: print the imports and log lines before the page")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- one start

class Launch:
    """One `python app.py --api` process in `folder`, the clock started just before it is spawned."""

    def __init__(self, folder: Path, cache_dir: Path, python_flags: tuple[str, ...] = ()):
        self.folder = folder
        self.log_path = folder / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "models").mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, *python_flags, "app.py", "--api", "--port", str(self.port),
                        "--device", "cpu", "--outputs-dir", str(folder / "outputs"), "--cache-dir", str(cache_dir),
                        "--models-dir", str(folder / "models")]
        self.process: subprocess.Popen | None = None
        self.started_wall = 0.0  # time.time() at launch, to place the log's timestamps
        self.started = 0.0  # time.perf_counter() at launch

    def start(self):
        log = open(self.log_path, "w")  # noqa: SIM115 (the server writes to it for its whole life)
        self.started_wall, self.started = time.time(), time.perf_counter()
        # A session of its own, as bench/load.py does: Ctrl-C reaches only this script, which stops the server.
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        log.close()  # the child holds its own copy

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def wait_for_page(self) -> float:
        """Seconds from the launch until GET / answers 200."""
        with httpx.Client(timeout=2) as client:
            while self.elapsed() < START_TIMEOUT_S:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/").status_code == 200:
                        return self.elapsed()
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(POLL_INTERVAL_S)
        raise SystemExit(f"the page did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def first_image(self, steps: int) -> float:
        """Seconds from the launch until a small txt2img call has returned its image."""
        body = {"prompt": "a red circle on a blue background", "width": 64, "height": 64, "steps": steps,
                "sampler_name": "Euler", "seed": 1, "save_images": True}
        response = httpx.post(self.url + "/sdapi/v1/txt2img", json=body, timeout=REQUEST_TIMEOUT_S)
        seconds = self.elapsed()
        if not response.is_success or len(response.json().get("images") or []) != 1:
            raise SystemExit(f"the first txt2img failed: HTTP {response.status_code}: {response.text[:500]}")
        return seconds

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_lines()[-lines:]) or "(no server log)"

    def log_times(self) -> list[tuple[float, str]]:
        """(seconds since the launch, text) of each timestamped log line."""
        timed = []
        for line in self.log_lines():
            match = LOG_TIME.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                timed.append((stamp - self.started_wall, line[match.end():]))
        return timed

    def stop(self):
        stop_process(self.process, STOP_TIMEOUT_S)


def first_log_time(launch: Launch, contains: str = "") -> float | None:
    return next((seconds for seconds, text in launch.log_times() if contains in text), None)


def timed_start(folder: Path, cache_dir: Path, steps: int) -> dict:
    launch = Launch(folder, cache_dir)
    try:
        launch.start()
        page = launch.wait_for_page()
        image = launch.first_image(steps)
    finally:
        launch.stop()
    return {"page_s": page, "first_image_s": image, "first_log_line_s": first_log_time(launch),
            "model_ready_s": first_log_time(launch, "root: ready:")}


# ---------------------------------------------------------------- the profile

def import_times(lines: list[str]) -> list[tuple[int, int, str]]:
    """(depth, cumulative microseconds, module) of each line `python -X importtime` wrote, in its order: a module
    comes after everything it imported, so its importer is the next line one level up."""
    rows = []
    for line in lines:
        match = IMPORT_TIME.match(line)
        if match:
            rows.append((len(match.group(3)) // 2, int(match.group(2)), match.group(4)))
    return rows


def importers(rows: list[tuple[int, int, str]], index: int) -> tuple[str, str]:
    """(the module that imported rows[index], the top-level import it happened under). `import peft.helpers`
    lists the package `peft` as imported by `peft.helpers`: the importer is the first module outside the package."""
    depth, _, module = rows[index]
    parent = top = module
    for later_depth, _, name in rows[index + 1:]:
        if later_depth == depth - 1:
            depth, parent = later_depth, name
            if name.startswith(module + "."):
                continue  # still inside the package: go one level further up
            break
    for later_depth, _, name in rows[index + 1:]:
        if later_depth == 0:
            top = name
            break
    return parent, top


def profile_start(folder: Path, cache_dir: Path) -> dict:
    """One start under -X importtime, stopped once the page answers: what ran before the page was there."""
    launch = Launch(folder, cache_dir, python_flags=("-X", "importtime"))
    try:
        launch.start()
        page = launch.wait_for_page()
    finally:
        launch.stop()
    rows = import_times(launch.log_lines())
    own = [(us, name) for depth, us, name in rows if depth == 0 and name.split(".")[0] in ("backend", "ui")]
    packages = sorted(((us, index) for index, (_, us, name) in enumerate(rows)
                       if "." not in name and not name.startswith("_")), reverse=True)[:TOP_IMPORTS]
    return {
        "page_s_under_importtime": page,
        "import_s_total": sum(us for depth, us, _ in rows if depth == 0) / 1e6,
        "own_module_imports": [(name, us / 1e6) for us, name in sorted(own, reverse=True)[:TOP_IMPORTS]],
        "heaviest_packages": [(rows[index][2], us / 1e6, *importers(rows, index)) for us, index in packages],
        "log_before_page": [(round(seconds, 2), text) for seconds, text in launch.log_times() if seconds <= page],
    }


def print_profile(profile: dict):
    print(f"\nprofile (-X importtime): page after {profile['page_s_under_importtime']:.2f} s; all imports together "
          f"{profile['import_s_total']:.2f} s")
    print("  app.py's own modules, imported before the page (cumulative s):")
    for name, seconds in profile["own_module_imports"]:
        print(f"    {seconds:7.2f}  {name}")
    print("  heaviest packages, where first imported (cumulative s: a package nested in another counts in both):")
    for name, seconds, parent, top in profile["heaviest_packages"]:
        print(f"    {seconds:7.2f}  {name:<14} imported by {parent} (under {top})")
    print("  server log before the page answered (s since launch):")
    for seconds, text in profile["log_before_page"]:
        print(f"    {seconds:7.2f}  {text[:110]}")


# ---------------------------------------------------------------- the run

def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(numbers: dict):
    cache = "one warm cache folder (run 1 fills it)" if numbers["warm_cache"] else "a fresh cache folder each run"
    print(f"\n{len(numbers['runs'])} starts, {cache}; {os.cpu_count()} CPUs, "
          f"load average up to {numbers['load_average']}")
    print(f"{'run':>4} {'page s':>8} {'first image s':>14} {'first log s':>12} {'model ready s':>14}")
    for number, run in enumerate(numbers["runs"], 1):
        note = "  (fills the cache; not in the median)" if numbers["warm_cache"] and number == 1 else ""
        print(f"{number:>4} {run['page_s']:>8.2f} {run['first_image_s']:>14.2f} "
              f"{seconds_text(run['first_log_line_s']):>12} {seconds_text(run['model_ready_s']):>14}{note}")
    print(f"median: page {numbers['median_page_s']:.2f} s, first image {numbers['median_first_image_s']:.2f} s, "
          f"model ready {seconds_text(numbers['median_model_ready_s'])} s")
    if numbers["machine_busy"]:
        print(f"note: the machine was busy (load average {numbers['load_average']}, {os.cpu_count()} CPUs): "
              "other programs slowed these starts down")
    verdict = "PASS" if numbers["passed"] else "FAIL"
    print(f"{verdict}: page answers after {numbers['median_page_s']:.2f} s (median; target < {TARGET_PAGE_S:g} s)")


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    shared_cache = workdir / "cache"
    load_before = os.getloadavg()[0]
    runs = []
    for number in range(1, args.runs + 1):
        folder = workdir / f"run-{number}"
        cache_dir = shared_cache if args.warm_cache else folder / "cache"
        print(f"start {number}/{args.runs} ...", flush=True)
        runs.append(timed_start(folder, cache_dir, args.steps))
    counted = runs[1:] if args.warm_cache and len(runs) > 1 else runs
    numbers = {
        "warm_cache": args.warm_cache, "runs": runs, "cpu_count": os.cpu_count(),
        "median_page_s": median_of(counted, "page_s"), "median_first_image_s": median_of(counted, "first_image_s"),
        "median_model_ready_s": median_of(counted, "model_ready_s"), "target_page_s": TARGET_PAGE_S,
        "load_average": round(max(load_before, os.getloadavg()[0]), 2),
    }
    numbers["machine_busy"] = numbers["load_average"] > (os.cpu_count() or 1) + 1  # the server itself adds ~1
    numbers["passed"] = numbers["median_page_s"] < TARGET_PAGE_S
    return numbers


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM gets the same clean shutdown (server stopped) as Ctrl-C


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        numbers = measure(args, workdir)
        print_report(numbers)
        if args.profile:
            print("profiling one more start ...", flush=True)
            cache_dir = workdir / "cache" if args.warm_cache else workdir / "profile" / "cache"
            numbers["profile"] = profile_start(workdir / "profile", cache_dir)
            print_profile(numbers["profile"])
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if args.keep_workdir:
            print(f"folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
