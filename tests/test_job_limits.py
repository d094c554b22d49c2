"""Limits on what one client can ask of the job queue (issue 26, item 9): pending jobs per client address, and
the nesting of extension arguments."""
from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.core.requests import MAX_EXTENSION_ARGS_DEPTH, RequestError, Txt2ImgRequest, build_request
from backend.core.settings import Settings
from backend.http.routes import build_api_router
from backend.jobs.queue import JobQueue, TooManyJobs
from backend.services import build_services


def test_one_client_cannot_fill_the_queue():
    release = threading.Event()
    queue = JobQueue(lambda request, progress: release.wait(60), max_pending_per_client=3)
    queue.start()
    try:
        mine = [queue.submit(f"job {n}", client="10.0.0.1") for n in range(3)]
        with pytest.raises(TooManyJobs, match="3 of your jobs"):
            queue.submit("one too many", client="10.0.0.1")
        others = queue.submit("someone else", client="10.0.0.2")  # other clients still get in line
        server_side = [queue.submit(f"internal {n}") for n in range(5)]  # the server's own jobs are not counted
        release.set()
        for job in (*mine, others, *server_side):
            assert job.finished.wait(60) and job.status == "done"
        assert queue.submit("after they finished", client="10.0.0.1").finished.wait(60)
    finally:
        release.set()
        queue.stop()


@pytest.fixture
def idle_services(tmp_path, models_dir):
    """Services whose worker never starts: submitted jobs stay queued."""
    services = build_services(Settings(models_dir=models_dir, outputs_dir=tmp_path / "outputs",
                                       cache_dir=tmp_path / "cache", device="cpu"), start_worker=False)
    yield services
    services.close()


def test_the_api_answers_429_when_a_client_has_too_many_jobs(idle_services):
    app = FastAPI()
    app.include_router(build_api_router(idle_services, None))
    idle_services.jobs.max_pending_per_client = 2
    for _ in range(2):  # queued by this client (TestClient's address is "testclient"), never run
        idle_services.jobs.submit(Txt2ImgRequest(prompt="wait", steps=1, width=64, height=64), client="testclient")
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
        assert answer.status_code == 429 and "2 of your jobs" in answer.json()["detail"]
        extras = client.post("/sdapi/v1/extra-single-image", json={
            "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==",
            "upscaler_1": "Nearest", "upscaling_resize": 2})
        assert extras.status_code == 429


def nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_extension_args_are_a_422(tmp_path, make_services):
    """Before: nesting past pydantic's serialisation limit answered 409 "Circular reference detected"."""
    with pytest.raises(RequestError, match=f"extension_args.*more than {MAX_EXTENSION_ARGS_DEPTH} levels"):
        build_request(Txt2ImgRequest, {"extension_args": {"probe": {"value": nested(MAX_EXTENSION_ARGS_DEPTH)}}})
    assert build_request(Txt2ImgRequest, {"extension_args": {"probe": {"v": nested(MAX_EXTENSION_ARGS_DEPTH - 2)}}})
    extensions = tmp_path / "extensions"
    (extensions / "probe").mkdir(parents=True)
    (extensions / "probe" / "__init__.py").write_text("def register(api):\n    pass\n")
    services = make_services(extensions_dir=extensions)
    app = FastAPI()
    app.include_router(build_api_router(services, None))
    with TestClient(app, raise_server_exceptions=False) as client:
        for depth in (40, 300):
            for field, value in (("extension_args", {"probe": {"value": nested(depth)}}),
                                 ("alwayson_scripts", {"probe": {"args": [nested(depth)]}})):
                answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                                field: value})
                assert answer.status_code == 422, (depth, field, answer.text)
                assert answer.json()["detail"].startswith("extension_args") and "levels deep" in answer.text
