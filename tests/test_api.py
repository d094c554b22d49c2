"""The A1111 REST API over HTTP against a running server with the tiny models."""
from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from backend.core.infotext import parse_infotext
from tests.server_process import ServerProcess
from tests.test_infotext import A1111_SAMPLE
from tests.tiny_networks import write_embedding, write_kohya_lora, write_vae

FAST = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("api")
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], models / checkpoint_files[key].name)
    write_kohya_lora(root / "models" / "Lora" / "style.safetensors", seed=1)
    write_vae(root / "models" / "VAE" / "other.safetensors")
    write_embedding(root / "embeddings" / "shiny.pt", width=32, vectors=3)
    (root / "embeddings" / "broken.safetensors").write_bytes(b"not weights at all")
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\n')
    process = ServerProcess(root, root / "models", "--api", "--ckpt", "tiny-sd1.safetensors").start()
    yield process
    process.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300) as http:
        yield http


def png_b64(image: Image.Image, text: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def test_txt2img_response_shape_info_and_embedded_infotext_agree(client):
    response = client.post("/txt2img", json={"prompt": "a red circle", "negative_prompt": "blurry", "seed": 77,
                                             "batch_size": 2, "sampler_name": "Euler a", **FAST})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert body["parameters"]["prompt"] == "a red circle" and body["parameters"]["steps"] == 3
    info = json.loads(body["info"])
    assert info["all_seeds"] == [77, 78] and info["seed"] == 77 and info["sampler_name"] == "Euler a"
    assert info["sd_model_name"] == "tiny-sd1" and len(info["sd_model_hash"]) == 10
    assert len(body["images"]) == 2
    for encoded, infotext in zip(body["images"], info["infotexts"]):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.size == (64, 64)
        assert image.info["parameters"] == infotext
    parsed = parse_infotext(info["infotexts"][1])
    assert parsed["Seed"] == "78" and parsed["Negative prompt"] == "blurry" and parsed["Model"] == "tiny-sd1"


def test_a1111_defaults_and_save_images(client, server):
    before = set(server.outputs.rglob("*.png"))
    body = client.post("/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}).json()
    info = json.loads(body["info"])
    assert info["sampler_name"] == "Euler"  # A1111's sampler_index default
    assert set(server.outputs.rglob("*.png")) == before  # save_images defaults to False, as in A1111
    client.post("/txt2img", json={"prompt": "saved", "save_images": True, **FAST})
    assert len(set(server.outputs.rglob("*.png")) - before) == 1


@pytest.mark.parametrize("payload,field", [
    ({"width": 65}, "width"), ({"steps": 0}, "steps"), ({"cfg_scale": 100}, "cfg_scale"),
    ({"sampler_name": "Nope"}, "sampler_name"), ({"scheduler": "wobbly"}, "scheduler"),
    ({"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, "sd_model_checkpoint"),
    ({"override_settings": {"sd_vae": "missing.safetensors"}}, "sd_vae"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "clip_skip"),
    ({"batch_size": 50}, "batch_size"), ({"seed": 2**40}, "seed"),
])
def test_bad_fields_get_422_naming_the_field(client, payload, field):
    response = client.post("/txt2img", json={**FAST, **payload})
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


def test_unsupported_features_answer_422_never_pretend(client):
    response = client.post("/img2img", json={**FAST, "init_images": [png_b64(Image.new("RGB", (64, 64)))] * 2})
    assert response.status_code == 422  # as A1111: more init images than batch_size is refused
    assert response.json()["detail"].startswith("init_images: 2 images for batch_size 1")
    response = client.post("/extra-single-image", json={"image": png_b64(Image.new("RGB", (8, 8))),
                                                        "upscaler_1": "Lanczos", "codeformer_visibility": 1})
    detail = response.json()["detail"]
    assert response.status_code == 422 and detail.startswith("codeformer_visibility: ") and "S-Lab" in detail


def test_legacy_firstphase_fields_are_accepted_and_ignored_as_a1111_does(client):
    plain = client.post("/txt2img", json={**FAST, "seed": 9, "enable_hr": True, "hr_scale": 1.5})
    legacy = client.post("/txt2img", json={**FAST, "seed": 9, "enable_hr": True, "hr_scale": 1.5,
                                           "firstphase_width": 128, "firstphase_height": 128})
    assert plain.status_code == legacy.status_code == 200
    assert plain.json()["images"] == legacy.json()["images"]


def test_separate_horizontal_and_vertical_mask_blur(client):
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    body = {**FAST, "seed": 3, "init_images": [png_b64(picture)], "mask": png_b64(mask), "denoising_strength": 1}
    answers = [client.post("/img2img", json={**body, "mask_blur_x": x, "mask_blur_y": y})
               for x, y in ((8, 8), (0, 12), (12, 0))]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    images = [answer.json()["images"][0] for answer in answers]
    assert len(set(images)) == 3  # each blur shape blends the repainted square differently
    infotexts = [json.loads(answer.json()["info"])["infotexts"][0] for answer in answers]
    assert "Mask blur: 8" in infotexts[0] and "Mask blur" not in infotexts[1]


def test_png_info_reads_ours_a1111_and_jpeg_exif(client):
    ours = client.post("/txt2img", json={"prompt": "round trip", "seed": 5, **FAST}).json()
    result = client.post("/png-info", json={"image": ours["images"][0]}).json()
    assert result["info"] == json.loads(ours["info"])["infotexts"][0]
    assert result["parameters"]["Seed"] == "5" and result["parameters"]["Prompt"] == "round trip"
    a1111 = client.post("/png-info", json={"image": "data:image/png;base64," + png_b64(Image.new("RGB", (8, 8)),
                                                                                       A1111_SAMPLE)}).json()
    assert a1111["parameters"]["Lora hashes"] == "detail: 1a2b3c4d5e6f"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_SAMPLE.encode("utf-16-be")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    jpeg = client.post("/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert jpeg["parameters"]["Hires upscaler"] == "R-ESRGAN 4x+"
    empty = client.post("/png-info", json={"image": png_b64(Image.new("RGB", (8, 8)))}).json()
    assert empty["info"] == "" and empty["parameters"] == {}


@pytest.mark.parametrize("image", ["%%%not base64%%%", base64.b64encode(b"<svg></svg>").decode(), ""])
def test_png_info_rejects_bad_images_with_422(client, image):
    response = client.post("/png-info", json={"image": image})
    assert response.status_code == 422 and "image:" in response.json()["detail"]


def test_listing_endpoints(client):
    models = client.get("/sd-models").json()
    assert {m["model_name"] for m in models} == {"tiny-sd1", "tiny-sd1-other"}
    assert all(m["title"] == f"{m['filename'].rsplit('/', 1)[1]} [{m['hash']}]" for m in models)
    assert all(m["sha256"].startswith(m["hash"]) for m in models)
    samplers = {s["name"]: s for s in client.get("/samplers").json()}
    assert "DPM++ 2M" in samplers and "k_euler_a" in samplers["Euler a"]["aliases"]
    schedulers = {s["name"]: s["label"] for s in client.get("/schedulers").json()}
    assert schedulers["karras"] == "Karras" and schedulers["sgm_uniform"] == "SGM Uniform"
    styles = client.get("/prompt-styles").json()
    assert styles == [{"name": "Cinematic", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}]
    memory = client.get("/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0 and "cuda" in memory
    assert client.post("/refresh-checkpoints").json() == {"count": 2}


def test_options_switch_the_model(client):
    options = client.get("/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [")
    switched = client.post("/options", json={"sd_model_checkpoint": "tiny-sd1-other", "sd_checkpoints_keep_in_cpu": 0})
    assert switched.status_code == 422 and switched.json()["detail"].startswith("sd_checkpoints_keep_in_cpu: ")
    assert client.get("/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [")  # unchanged
    switched = client.post("/options", json={"sd_model_checkpoint": "tiny-sd1-other", "eta_ddim": 0.5})
    assert switched.status_code == 200
    assert switched.json() == {"changed": ["eta_ddim", "sd_model_checkpoint"], "unused": ["eta_ddim"],
                               "overridden": []}
    assert client.get("/options").json()["sd_model_checkpoint"].startswith("tiny-sd1-other.safetensors [")
    info = json.loads(client.post("/txt2img", json={"prompt": "p", **FAST}).json()["info"])
    assert info["sd_model_name"] == "tiny-sd1-other"
    bad = client.post("/options", json={"sd_model_checkpoint": "nope"})
    assert bad.status_code == 422 and "sd_model_checkpoint" in bad.json()["detail"]
    assert client.post("/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"}).status_code == 200


def test_progress_interrupt_and_skip_of_one_job(client):
    idle = client.get("/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    results = {}

    def long_job():
        results["long"] = client.post("/txt2img", json={"prompt": "long", "force_task_id": "long-1", "steps": 150,
                                                        "n_iter": 4, "width": 64, "height": 64}).json()

    thread = threading.Thread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = client.get("/progress", params={"id_task": "long-1"}).json()  # 404 until the job is queued
        if state.get("status") == "running" and state["state"]["sampling_step"] >= 15:  # previews every 10 steps
            break
        time.sleep(0.1)
    assert state["current_task"] == "long-1" and 0 < state["progress"] < 1 and state["eta_relative"] > 0
    assert state["current_image"], "a live preview is returned while sampling"
    preview = Image.open(io.BytesIO(base64.b64decode(state["current_image"])))
    assert preview.size == (64, 64)  # the tiny model's small VAE, which no linear map follows, draws it itself
    assert client.post("/skip", params={"id_task": "long-1"}).json()["skipped"] is True
    time.sleep(0.5)
    assert client.post("/interrupt", params={"id_task": "long-1"}).json()["interrupted"] is True
    thread.join(120)
    assert "info" in results["long"], results["long"]
    info = json.loads(results["long"]["info"])
    assert info["interrupted"] is True and len(results["long"]["images"]) < 4
    assert client.post("/interrupt", params={"id_task": "no-such"}).status_code == 404


def test_docs_and_openapi(server):
    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in ("txt2img", "img2img", "png-info", "progress", "interrupt", "skip", "options", "sd-models",
                 "samplers", "schedulers", "upscalers", "loras", "sd-vae", "embeddings", "prompt-styles",
                 "refresh-checkpoints", "refresh-loras", "memory", "extra-single-image", "extra-batch-images",
                 "latent-upscale-modes"):
        assert f"/sdapi/v1/{path}" in paths, path


def test_eight_clients_three_jobs_each_fifo_and_one_cancelled(client, server):
    outcomes: dict[str, dict] = {}
    lock = threading.Lock()

    def one_client(number: int):
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300) as http:
            for job in range(3):
                task = f"c{number}-j{job}"
                steps = 150 if task == "c3-j1" else 2
                response = http.post("/txt2img", json={"prompt": f"client {number} job {job}",
                                                       "seed": number * 10 + job, "force_task_id": task,
                                                       "steps": steps, "width": 64, "height": 64})
                with lock:
                    outcomes[task] = response.json()

    def cancel_c3_j1():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = client.get("/progress", params={"id_task": "c3-j1"})
            if state.status_code == 200 and state.json()["status"] == "running":
                client.post("/interrupt", params={"id_task": "c3-j1"})
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=one_client, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=cancel_c3_j1))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(outcomes) == 24
    for task, body in outcomes.items():
        number, job = int(task[1]), int(task[-1])
        info = json.loads(body["info"])
        if task == "c3-j1":
            assert info["interrupted"] is True
            continue
        assert info["interrupted"] is False and len(body["images"]) == 1, task
        parsed = parse_infotext(info["infotexts"][0])
        assert parsed["Prompt"] == f"client {number} job {job}" and parsed["Seed"] == str(number * 10 + job)
    from backend.jobs.history import JobHistory

    history = JobHistory(server.outputs / "history.sqlite3")
    rows = [row for row in history.jobs(limit=1000) if row["id"].startswith("c")]
    history.close()
    by_sequence = sorted(rows, key=lambda row: row["sequence"])
    assert [row["started_at"] for row in by_sequence] == sorted(row["started_at"] for row in rows)  # FIFO


def test_img2img_with_mask_and_a1111_defaults(client):
    image = Image.new("RGB", (64, 64), (200, 40, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    body = {"init_images": ["data:image/png;base64," + png_b64(image)], "mask": png_b64(mask), "mask_blur": 0,
            "inpaint_full_res": False, "inpainting_fill": 1, "denoising_strength": 0.9, "seed": 4, "steps": 3,
            "width": 64, "height": 64, "prompt": "patch"}
    response = client.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    info = json.loads(result["info"])
    assert info["denoising_strength"] == 0.9 and result["parameters"]["init_images"] is None
    output = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB"), dtype=int)
    untouched = np.asarray(mask) == 0
    assert np.array_equal(output[untouched], np.asarray(image, dtype=int)[untouched])
    assert "Mask blur: 0" in info["infotexts"][0]
    defaults = client.post("/img2img", json={"init_images": [png_b64(image)], "mask": png_b64(mask), **FAST})
    infotext = json.loads(defaults.json()["info"])["infotexts"][0]
    # A1111's API defaults: masked content "fill", inpaint area "only masked" with 0 padding
    assert "Masked content: fill" in infotext and "Inpaint area: Only masked" in infotext


@pytest.mark.parametrize("body,status,field", [
    ({}, 422, "init_images"),
    ({"init_images": ["%%%"]}, 422, "init_images[0]"),
    ({"init_images": ["VALID"], "mask": "%%%"}, 422, "mask"),
    ({"init_images": ["VALID"], "denoising_strength": 2}, 422, "denoising_strength"),
    ({"init_images": ["VALID", "VALID"]}, 422, "init_images: 2 images for batch_size 1"),
    ({"init_images": ["VALID"], "mask": "EMPTY"}, 422, "mask: the mask is empty"),
])
def test_img2img_errors(client, body, status, field):
    valid = png_b64(Image.new("RGB", (64, 64)))
    empty = png_b64(Image.new("L", (64, 64)))
    body = json.loads(json.dumps(body).replace("VALID", valid).replace("EMPTY", empty))
    response = client.post("/img2img", json={**FAST, **body})
    assert response.status_code == status, response.text
    assert field in json.dumps(response.json()["detail"])


def test_lora_vae_and_embedding_lists(client):
    loras = client.get("/loras").json()
    assert [(item["name"], item["alias"]) for item in loras] == [("style", "style")]
    assert loras[0]["path"].endswith("style.safetensors") and loras[0]["metadata"]["ss_output_name"] == "style"
    assert client.get("/sd-vae").json() == [{"model_name": "other.safetensors",
                                            "filename": client.get("/sd-vae").json()[0]["filename"]}]
    embeddings = client.get("/embeddings").json()
    assert embeddings["loaded"]["shiny"] == {"step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                            "shape": 32, "vectors": 3, "error": None}
    assert "broken" in embeddings["skipped"] and embeddings["skipped"]["broken"]["error"]
    assert client.post("/refresh-loras").json() == {"count": 1}


def test_overrides_clip_skip_and_vae_lora_tags_and_warnings(client):
    plain = client.post("/txt2img", json={**FAST, "prompt": "a cat", "seed": 3}).json()
    tuned = client.post("/txt2img", json={**FAST, "prompt": "a cat <lora:style:0.6> <lora:nosuch:1>", "seed": 3,
                                          "override_settings": {"CLIP_stop_at_last_layers": 2,
                                                                "sd_vae": "other.safetensors"}}).json()
    info = json.loads(tuned["info"])
    assert info["clip_skip"] == 2 and info["sd_vae_name"] == "other.safetensors" and len(info["sd_vae_hash"]) == 10
    assert info["extra_generation_params"]["Lora hashes"].startswith("style: ")
    assert info["warnings"] == [info["warnings"][0]] and "nosuch" in info["warnings"][0]
    assert tuned["images"][0] != plain["images"][0]
    parameters = parse_infotext(info["infotexts"][0])
    assert parameters["Clip skip"] == "2" and parameters["VAE"] == "other.safetensors"
