"""/sdapi/v1/options against a server process: values are validated, saved to config.json, used by the next job
and still there after a restart; command-line flags win."""
from __future__ import annotations

import base64
import json
import os

import httpx
from PIL import Image

from backend.core.image_metadata import read_infotext
from tests.server_process import ServerProcess

FAST = {"steps": 2, "width": 64, "height": 64}


def test_options_persist_across_a_restart_and_drive_saving(tmp_path, checkpoint_files):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], models / checkpoint_files[key].name)
    server = ServerProcess(tmp_path, tmp_path / "models", "--api").start()
    try:
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300) as api:
            options = api.get("/options").json()
            assert options["samples_format"] == "png" and options["jpeg_quality"] == 80
            assert options["sd_checkpoints_limit"] == 1 and options["sd_model_checkpoint"].startswith("tiny-sd1")
            bad = api.post("/options", json={"jpeg_quality": 90, "samples_format": "tiff"})
            assert bad.status_code == 422 and bad.json()["detail"].startswith("samples_format: must be 'png'")
            assert api.post("/options", json={"nope_option": 1}).json()["detail"] == \
                "nope_option: not an option this server knows"
            failed = api.post("/options", json={"sd_model_checkpoint": "missing-model", "jpeg_quality": 90})
            assert failed.status_code == 422 and failed.json()["detail"].startswith("sd_model_checkpoint: ")
            assert api.get("/options").json()["jpeg_quality"] == 80  # a failed request changes nothing
            changed = api.post("/options", json={
                "samples_format": "jpg", "jpeg_quality": 90, "samples_filename_pattern": "[seed]-[prompt_words]",
                "save_txt": True, "sd_model_checkpoint": "tiny-sd1-other", "eta_ancestral": 0.5})
            assert changed.status_code == 200, changed.text
            assert changed.json()["unused"] == ["eta_ancestral"] and "samples_format" in changed.json()["changed"]
            body = api.post("/txt2img", json={"prompt": "a red circle", "seed": 5, "save_images": True,
                                              **FAST}).json()
            info = json.loads(body["info"])
            assert info["sd_model_name"] == "tiny-sd1-other"
        saved = sorted(server.outputs.rglob("*.jpg"))
        assert [path.name for path in saved] == ["00000-5-a red circle.jpg"]
        with Image.open(saved[0]) as image:
            assert image.format == "JPEG" and read_infotext(image) == info["infotexts"][0]
        assert saved[0].with_suffix(".txt").read_text() == info["infotexts"][0] + "\n"
        stored = json.loads((tmp_path / "config.json").read_text())
        assert stored["samples_format"] == "jpg" and stored["sd_model_checkpoint"].startswith("tiny-sd1-other")
    finally:
        server.stop()

    restarted = ServerProcess(tmp_path, tmp_path / "models", "--api", "--max-models", "3").start()
    try:
        with httpx.Client(base_url=restarted.url + "/sdapi/v1", timeout=300) as api:
            options = api.get("/options").json()
            assert options["samples_format"] == "jpg" and options["jpeg_quality"] == 90 and options["save_txt"]
            assert options["eta_ancestral"] == 0.5
            assert options["sd_model_checkpoint"].startswith("tiny-sd1-other")  # the choice is loaded at start
            assert options["sd_checkpoints_limit"] == 3  # --max-models wins over config.json
            answer = api.post("/options", json={"sd_checkpoints_limit": 2}).json()
            assert answer["overridden"] == ["sd_checkpoints_limit"]
            assert api.get("/options").json()["sd_checkpoints_limit"] == 3
            png_info = api.post("/png-info", json={"image": base64.b64encode(
                sorted(restarted.outputs.rglob("*.jpg"))[0].read_bytes()).decode()}).json()
            assert png_info["info"] == info["infotexts"][0] and png_info["parameters"]["Seed"] == "5"
    finally:
        restarted.stop()
    assert json.loads((tmp_path / "config.json").read_text())["sd_checkpoints_limit"] == 2
