"""Checkpoints that cannot be loaded (a code-carrying pickle, a truncated file) sorted first in the folder: the
default is the first model that loads, a failed switch keeps the previous model, and every report is safe."""
from __future__ import annotations

import logging
import os
import pickle
import re

import httpx
import pytest
import torch

from backend.models.weight_files import CheckpointError
from tests.conftest import run_txt2img
from tests.server_process import ServerProcess

TORCH_ADVICE = ("weights_only", "safe_globals", "can still be loaded", "trust")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo payload-ran",))


def add_broken_checkpoints(models_dir):
    """aa-evil.ckpt (a pickle that would run code) and ab-truncated.safetensors: both sort before the good ones."""
    folder = models_dir / "Stable-diffusion"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload()}, folder / "aa-evil.ckpt")
    data = (folder / "tiny-sd1.safetensors").read_bytes()
    (folder / "ab-truncated.safetensors").write_bytes(data[: len(data) // 2])


def assert_safe_report(message: str):
    assert not any(advice in message for advice in TORCH_ADVICE), message
    assert "\x1b" not in message


@pytest.fixture
def broken_first(make_services, models_dir):
    add_broken_checkpoints(models_dir)
    return make_services()


def test_default_is_the_first_checkpoint_that_loads(broken_first, caplog):
    models = broken_first.models
    assert [e.name for e in models.list_checkpoints()][:2] == ["aa-evil.ckpt", "ab-truncated.safetensors"]
    with caplog.at_level(logging.WARNING, logger="backend.models.manager"):
        entry = models.load_default()
        assert entry.name == "tiny-sd1-other.safetensors" and models.selected == entry  # the first good one
        job = run_txt2img(broken_first)  # no checkpoint in the request: the default serves it
        assert job.status == "done" and job.result.images[0].infotext.endswith("Model: tiny-sd1-other")
        with pytest.raises(CheckpointError):
            models.select("aa-evil.ckpt")  # tried again: reported to the caller, not logged again
    assert models.selected == entry
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and sum("aa-evil.ckpt" in w for w in warnings) == 1
    evil, truncated = models.failure(models.list_checkpoints()[0].title), models.failure(
        models.list_checkpoints()[1].title)
    assert evil.startswith("aa-evil.ckpt contains Python objects other than plain weights")
    assert "system" in evil and "nothing in it ran" in evil and ".safetensors version" in evil
    assert truncated.startswith("ab-truncated.safetensors")
    for message in (evil, truncated, *warnings):
        assert_safe_report(message)


def test_a_job_before_the_start_up_choice_waits_for_it_and_skips_broken_files(broken_first):
    job = run_txt2img(broken_first)  # the worker asks for the default before anything chose it
    assert job.status == "done", job.error
    assert broken_first.models.selected.name == "tiny-sd1-other.safetensors"


def test_the_torch_refusal_is_reported_without_its_advice(tmp_path):
    from backend.models.weight_files import read_weights

    path = tmp_path / "legacy.ckpt"
    path.write_bytes(pickle.dumps({"x": _Payload()}, protocol=2))
    with pytest.raises(CheckpointError) as raised:
        read_weights(path)
    assert "it asks to run" in str(raised.value) and "system" in str(raised.value)
    assert_safe_report(str(raised.value))


def test_server_starts_on_the_first_good_model_and_a_failed_switch_keeps_it(tmp_path, models_dir):
    add_broken_checkpoints(models_dir)
    server = ServerProcess(tmp_path, models_dir, "--api").start()
    try:
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300) as client:
            body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
            assert client.post("/txt2img", json=body).status_code == 200  # served by the first good model
            assert client.get("/options").json()["sd_model_checkpoint"].startswith("tiny-sd1-other.safetensors [")
            failed = client.post("/options", json={"sd_model_checkpoint": "aa-evil.ckpt"})
            assert failed.status_code == 422
            detail = failed.json()["detail"]
            assert detail.startswith("sd_model_checkpoint: aa-evil.ckpt contains Python objects"), detail
            assert_safe_report(detail)
            assert client.get("/options").json()["sd_model_checkpoint"].startswith("tiny-sd1-other.safetensors [")
            assert client.post("/txt2img", json=body).status_code == 200
            unknown = client.post("/options", json={"sd_model_checkpoint": "nope"}).json()["detail"]
            assert unknown.startswith("sd_model_checkpoint: no model named 'nope'")
    finally:
        server.stop()
    log = server.log_path.read_text()
    reports = re.findall(r"checkpoint (\S+) \[\w+\] cannot be loaded: (.*)", log)
    assert sorted(name for name, _ in reports) == ["aa-evil.ckpt", "ab-truncated.safetensors"]  # once each
    assert "payload-ran" not in log and "Traceback" not in log
    for _, message in reports:
        assert_safe_report(message)
