"""The rest of A1111's /sdapi/v1 listing endpoints: cmd-flags (secrets redacted), extensions (with git facts),
realesrgan-models, hypernetworks, interrogate, and Extras with upscaler "None" (images back unchanged)."""
from __future__ import annotations

import base64
import io
import subprocess

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from backend.http.routes import build_api_router
from tests.tiny_upscalers import write_upscaler_folder

EXTENSION = '__version__ = "1.2"\n\ndef register(api):\n    pass\n'


@pytest.fixture
def api(make_services, models_dir, tmp_path):
    write_upscaler_folder(models_dir)
    (models_dir / "hypernetworks" / "styles").mkdir(parents=True)
    (models_dir / "hypernetworks" / "anime.pt").write_bytes(b"x")
    (models_dir / "hypernetworks" / "styles" / "ink.safetensors").write_bytes(b"x")
    (models_dir / "hypernetworks" / "notes.txt").write_text("not a network")
    extension = tmp_path / "extensions" / "gitext"
    extension.mkdir(parents=True)
    (extension / "__init__.py").write_text(EXTENSION)
    git = ["git", "-C", str(extension), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://user:s3cret@example.com/org/gitext.git"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    services = make_services(extensions_dir=tmp_path / "extensions", command_flags={
        "api": True, "listen": False, "api_auth": "me:hunter2", "gradio_auth": None, "share_no_auth": True,
        "gradio_auth_path": "/etc/auth.txt", "port": 7860, "models_dir": str(models_dir)})
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        yield client


def test_cmd_flags_every_flag_with_secrets_redacted(api):
    flags = api.get("/sdapi/v1/cmd-flags").json()
    assert flags["api_auth"] == "<redacted>" and "hunter2" not in str(flags)
    assert flags["gradio_auth"] is None and flags["share_no_auth"] is True and flags["port"] == 7860
    assert flags["gradio_auth_path"] == "/etc/auth.txt" and flags["api"] is True


def test_app_passes_every_flag():
    import app

    args = app.parse_args(["--api", "--api-auth", "a:b", "--port", "7999"])
    flags = app.settings_from_args(args).command_flags
    assert set(flags) == set(vars(args)) and flags["port"] == 7999 and isinstance(flags["models_dir"], str)


def test_extensions_listed_with_git_facts(api):
    (listed,) = api.get("/sdapi/v1/extensions").json()
    assert set(listed) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    assert listed["name"] == "gitext" and listed["enabled"] is True and listed["branch"] == "main"
    assert listed["remote"] == "https://example.com/org/gitext.git"  # credentials in the URL are not shown
    assert len(listed["commit_hash"]) == 40 and listed["commit_date"] > 1_600_000_000 and listed["version"] == "1.2"


def test_realesrgan_models_and_hypernetworks(api, models_dir):
    models = api.get("/sdapi/v1/realesrgan-models").json()
    assert sorted((item["name"], item["scale"]) for item in models) == [
        ("tiny-compact-x2", 2), ("tiny-compact-x4", 4), ("tiny-realesrgan-x4plus", 4)]
    networks = api.get("/sdapi/v1/hypernetworks").json()
    assert networks == [{"name": "anime", "path": str(models_dir / "hypernetworks" / "anime.pt")},
                        {"name": "ink", "path": str(models_dir / "hypernetworks" / "styles" / "ink.safetensors")}]


def test_interrogate_names_the_model_it_would_need(api):
    image = base64.b64encode(png(Image.new("RGB", (8, 8)))).decode()
    answer = api.post("/sdapi/v1/interrogate", json={"image": image, "model": "clip"})
    assert answer.status_code == 422 and "BLIP" in answer.json()["detail"]
    assert answer.json()["detail"].startswith("model: interrogating with 'clip' needs")
    tags = api.post("/sdapi/v1/interrogate", json={"image": image, "model": "deepdanbooru"})
    assert tags.status_code == 422 and "DeepDanbooru" in tags.json()["detail"]
    assert api.post("/sdapi/v1/interrogate", json={"image": image, "model": "nope"}).status_code == 404


def png(image: Image.Image, text: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_extras_with_a1111_defaults_return_the_images_unchanged(api):
    pixels = np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    source = png(Image.fromarray(pixels), "a cat\nSteps: 3, Seed: 9, Size: 40x24")
    single = api.post("/sdapi/v1/extra-single-image", json={"image": base64.b64encode(source).decode(),
                                                            "upscaling_resize": 4})
    assert single.status_code == 200, single.text
    back = Image.open(io.BytesIO(base64.b64decode(single.json()["image"])))
    assert back.size == (40, 24) and np.array_equal(np.asarray(back.convert("RGB")), pixels)
    assert back.info["parameters"] == "a cat\nSteps: 3, Seed: 9, Size: 40x24"
    batch = api.post("/sdapi/v1/extra-batch-images", json={"imageList": [
        {"data": base64.b64encode(source).decode(), "name": "a.png"},
        {"data": base64.b64encode(png(Image.new("RGB", (8, 6), "red"))).decode(), "name": "b.png"}]})
    assert batch.status_code == 200, batch.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for data in batch.json()["images"]]
    assert sizes == [(40, 24), (8, 6)]
