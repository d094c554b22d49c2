"""A killed server restarts with its history intact and its unfinished job marked interrupted;
--api-auth protects the API."""
from __future__ import annotations

import threading
import time

import httpx

from backend.jobs.history import STOPPED_MESSAGE, JobHistory
from tests.server_process import ServerProcess


def test_kill_and_restart_keeps_history_and_marks_the_running_job(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir, "--api").start()
    api = server.url + "/sdapi/v1"
    try:
        done = httpx.post(api + "/txt2img", json={"prompt": "kept", "save_images": True, "steps": 2, "width": 64,
                                                  "height": 64, "force_task_id": "finished-1"}, timeout=120)
        assert done.status_code == 200
        threading.Thread(target=lambda: httpx.post(api + "/txt2img", timeout=120, json={
            "prompt": "cut short", "steps": 150, "n_iter": 50, "width": 64, "height": 64,
            "force_task_id": "running-1"}), daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if httpx.get(api + "/progress", params={"id_task": "running-1"}).json().get("status") == "running":
                break
            time.sleep(0.1)
        server.kill()
    finally:
        server.stop()

    restarted = ServerProcess(tmp_path, models_dir, "--api")
    restarted.port, restarted.url = server.port, server.url
    restarted.start()
    try:
        history = JobHistory(restarted.outputs / "history.sqlite3")
        assert history.job("finished-1")["status"] == "done"
        interrupted = history.job("running-1")
        assert interrupted["status"] == "interrupted" and interrupted["error"] == STOPPED_MESSAGE
        images = history.images("kept")
        assert len(images) == 1 and images[0]["job_id"] == "finished-1"
        history.close()
        # the restarted server keeps serving and numbering continues
        again = httpx.post(restarted.url + "/sdapi/v1/txt2img", timeout=120, json={
            "prompt": "after restart", "save_images": True, "steps": 2, "width": 64, "height": 64})
        assert again.status_code == 200
        names = sorted(p.name for p in restarted.outputs.rglob("*.png"))
        assert [name[:5] for name in names] == ["00000", "00001"]
    finally:
        restarted.stop()


def test_api_auth(tmp_path, models_dir):
    server = ServerProcess(tmp_path, models_dir, "--api", "--api-auth", "alice:secret").start()
    try:
        assert httpx.get(server.url + "/sdapi/v1/sd-models").status_code == 401
        assert httpx.get(server.url + "/sdapi/v1/sd-models", auth=("alice", "wrong")).status_code == 401
        assert httpx.get(server.url + "/sdapi/v1/sd-models", auth=("alice", "secret")).status_code == 200
    finally:
        server.stop()
