"""Command-line flags with A1111's names, documented in --help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--listen", "--port", "--share", "--gradio-auth", "--gradio-auth-path", "--models-dir", "--ckpt-dir",
         "--outputs-dir", "--ckpt", "--device", "--precision", "--xformers", "--api", "--lora-dir", "--vae-dir",
         "--embeddings-dir", "--extensions-dir", "--enable-insecure-extension-access", "--allowed-hosts",
         "--forwarded-allow-ips", "--workers", "--ray-address", "--worker-threads", "--ray-dashboard"]


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    for flag in FLAGS:
        assert flag in text, flag


def test_auth_from_flag_and_file(tmp_path):
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("carol:pw3\ndave:p:w4\n")
    args = app.parse_args(["--gradio-auth", "alice:pw1,bob:pw2", "--gradio-auth-path", str(auth_file)])
    assert app.read_auth(args) == [("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"), ("dave", "p:w4")]
    assert app.read_auth(app.parse_args([])) is None
    with pytest.raises(SystemExit, match="not USER:PASS"):
        app.read_auth(app.parse_args(["--gradio-auth", "nopassword"]))


def test_bad_device_and_precision_are_refused():
    import torch

    from backend.models.devices import choose_device, choose_dtype

    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        choose_dtype("fp16", torch.device("cpu"))
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            choose_device("cuda")


def test_extension_installs_are_refused_on_exposed_servers_unless_opted_in():
    assert app.settings_from_args(app.parse_args([])).extension_install_refused is None
    listen = app.settings_from_args(app.parse_args(["--listen"])).extension_install_refused
    assert "--listen" in listen and "--enable-insecure-extension-access" in listen
    assert "--share" in app.settings_from_args(app.parse_args(["--share"])).extension_install_refused
    opted_in = app.parse_args(["--listen", "--share", "--enable-insecure-extension-access"])
    assert app.settings_from_args(opted_in).extension_install_refused is None


def test_worker_flags_choose_the_pool_and_refuse_nonsense(tmp_path, capsys):
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    assert app.worker_pool(app.parse_args([]), settings) is None  # the in-process worker; Ray is not imported
    pool = app.worker_pool(app.parse_args(["--workers", "2", "--worker-threads", "1"]), settings)
    assert (pool.plan.workers, pool.plan.address, pool.plan.torch_threads, pool.plan.dashboard) == (2, None, 1, False)
    assert app.worker_pool(app.parse_args(["--workers", "auto"]), settings).plan.workers is None  # one per GPU
    joined = app.worker_pool(app.parse_args(["--ray-address", "10.0.0.5:6379", "--workers", "3"]), settings)
    assert (joined.plan.address, joined.plan.workers) == ("10.0.0.5:6379", 3)
    for bad in (["--workers", "0"], ["--workers", "many"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)
        assert "--workers" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--worker-threads"):
        app.worker_pool(app.parse_args(["--workers", "2", "--worker-threads", "0"]), settings)
