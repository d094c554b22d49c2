"""The Script menu over A1111's REST API: /scripts, /script-info, and each script's output (sizes, counts, grid
files, infotext) through script_name / script_args."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.infotext import parse_infotext
from backend.generation.scripts.prompt_matrix import matrix_prompts
from backend.generation.scripts.sd_upscale import combine_tiles, split_tiles, tile_origins
from backend.http.routes import build_api_router

FAST = {"steps": 2, "width": 64, "height": 64, "save_images": True}


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def source_png() -> str:
    image = Image.new("RGB", (64, 64), (200, 40, 30))
    image.paste((30, 60, 220), (0, 0, 32, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_scripts_and_script_info_list_a1111_names_and_arguments(client):
    listed = client.get("/sdapi/v1/scripts").json()
    always_on = ["sampler", "seed", "refiner"]  # A1111's always-on processing scripts, listed too
    assert listed["txt2img"] == ["prompt matrix", "prompts from file or textbox", *always_on]
    assert listed["img2img"] == ["loopback", "outpainting mk2", "poor man's outpainting", "prompt matrix",
                                 "prompts from file or textbox", "sd upscale", *always_on]
    info = client.get("/sdapi/v1/script-info").json()
    upscale = next(item for item in info if item["name"] == "sd upscale")
    assert upscale["is_img2img"] is True and upscale["is_alwayson"] is False
    assert [arg["label"] for arg in upscale["args"]] == ["Info", "Tile overlap", "Upscaler", "Scale Factor"]
    overlap = upscale["args"][1]
    assert (overlap["value"], overlap["minimum"], overlap["maximum"], overlap["step"]) == (64, 0, 256, 16)
    assert {"None", "Lanczos", "Nearest"} <= set(upscale["args"][2]["choices"])
    matrices = [item for item in info if item["name"] == "prompt matrix"]
    assert [item["is_img2img"] for item in matrices] == [False, True]


def test_always_on_scripts_in_script_info_and_alwayson_scripts(client):
    info = client.get("/sdapi/v1/script-info").json()
    seeds = [item for item in info if item["name"] == "seed"]
    assert [(item["is_alwayson"], item["is_img2img"]) for item in seeds] == [(True, False), (True, True)]
    assert [arg["label"] for arg in seeds[0]["args"]] == ["Seed", "Extra", "Variation seed", "Variation strength",
                                                          "Resize seed from width", "Resize seed from height"]
    sampler = next(item for item in info if item["name"] == "sampler")
    assert [arg["value"] for arg in sampler["args"]] == [20, "DPM++ 2M", "Automatic"]
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cat", "seed": 1, "alwayson_scripts": {
        "Seed": {"args": [123, True, 9, 0.5, 0, 0]}, "sampler": {"args": [3, "Euler", "Karras"]}}})
    assert response.status_code == 200, response.text
    parsed = parse_infotext(json.loads(response.json()["info"])["infotexts"][0])
    assert (parsed["Seed"], parsed["Variation seed"], parsed["Variation seed strength"]) == ("123", "9", "0.5")
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"]) == ("3", "Euler", "Karras")
    bad = client.post("/sdapi/v1/txt2img", json={**FAST, "alwayson_scripts": {"Seed": {"args": ["x"]}}})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("alwayson_scripts.Seed.script_args[0]: Seed")
    selected = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": "seed"})
    assert selected.status_code == 422 and selected.json()["detail"].startswith("script_name: no script 'seed'")


def test_prompt_matrix_makes_every_combination_and_a_labelled_grid(client, services):
    assert matrix_prompts("a cat|red|blue", False, ", ")[0] == ["a cat", "a cat, red", "a cat, blue",
                                                                "a cat, red, blue"]
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat|red|blue", "seed": 7, **FAST,
                                                      "script_name": "prompt matrix", "script_args": []})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]
    assert info["all_seeds"] == [7] * 4 and info["index_of_first_image"] == 1  # the grid first, not in all_*
    images = [decode(data) for data in body["images"]]
    # 2 x 2 cells of 64 px; labels: top = 1 line * (8 + 4) + 2 * 4 = 20 px, left = 64 * 3 // 4 = 48 px
    assert images[0].size == (48 + 128, 20 + 128)
    grid = np.asarray(images[0].convert("RGB"))
    assert np.array_equal(grid[20 + 64:, 48 + 64:], np.asarray(images[4].convert("RGB")))  # cell (1, 1): red+blue
    assert info["infotexts"][0] == info["infotexts"][1]
    grids = list((services.outputs.root / "txt2img-grids").rglob("prompt_matrix-*.png"))
    assert [path.name for path in grids] == ["prompt_matrix-00000.png"]
    assert len(list((services.outputs.root / "txt2img-images").rglob("*.png"))) == 4


def test_prompt_matrix_different_seeds_and_negative_prompt(client):
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat", "negative_prompt": "ugly|blurry", "seed": 3, **FAST, "script_name": "Prompt matrix",
        "script_args": [True, True, "negative", "space", 4]})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_negative_prompts"] == ["ugly", "blurry ugly"]  # variable parts first, joined by a space
    assert info["all_seeds"] == [3, 4]
    assert decode(response.json()["images"][0]).size == (2 * 64 + 4, 20 + 64)  # one row, no row labels, 4 px margin


def test_prompt_matrix_runs_in_batches_of_batch_size(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat|red|blue", "seed": 7, **FAST, "batch_size": 2,
                                                      "n_iter": 3, "script_name": "prompt matrix"})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]  # batch count ignored
    assert info["all_seeds"] == [7] * 4
    batch_keys = [(parsed.get("Batch size"), parsed.get("Batch pos"))
                  for parsed in map(parse_infotext, info["infotexts"][1:])]
    assert batch_keys == [("2", "0"), ("2", "1"), ("2", "0"), ("2", "1")]  # two batches of two
    alone = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat, red", "seed": 7, **FAST}).json()
    batched, single = (np.asarray(decode(data), dtype=int) for data in (body["images"][2], alone["images"][0]))
    assert np.abs(batched - single).max() <= 2  # its own prompt and seed (batched arithmetic: rounding only)
    assert np.abs(np.asarray(decode(body["images"][3]), dtype=int) - single).mean() > 2  # another prompt differs


def test_prompts_from_file_runs_one_generation_per_line(client):
    lines = 'a red circle\n\n--prompt "a blue square" --steps 3 --seed 11 --negative_prompt blurry\n'
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "", "seed": 5, **FAST, "script_name": "prompts from file or textbox",
        "script_args": [False, False, "start", lines]})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_prompts"] == ["a red circle", "a blue square"]
    assert info["all_seeds"] == [5, 11]
    second = parse_infotext(info["infotexts"][1])
    assert (second["Steps"], second["Negative prompt"]) == ("3", "blurry")

    appended = client.post("/sdapi/v1/txt2img", json={
        "prompt": "painting", "seed": 5, **FAST, "script_name": "prompts from file or textbox",
        "script_args": [True, False, "end", "a cat\na dog"]})
    info = json.loads(appended.json()["info"])
    assert info["all_prompts"] == ["painting a cat", "painting a dog"] and info["all_seeds"] == [5, 6]


def test_script_mistakes_are_422s_naming_the_argument(client):
    cases = [
        ({"script_name": "no such script"}, "script_name: no script 'no such script' on txt2img"),
        ({"script_name": "sd upscale"}, "script_name: no script 'sd upscale' on txt2img"),
        ({"script_name": "prompt matrix", "script_args": [False, False, "sideways"]}, "script_args[2]: "),
        ({"script_name": "prompt matrix", "script_args": [False] * 6}, "script_args: Prompt matrix takes at most 5"),
        ({"script_name": "prompts from file or textbox", "script_args": [False, False, "start", "--bogus 1"]},
         "script_args[3] line 1: unknown option '--bogus'"),
        ({"script_name": "prompts from file or textbox", "script_args": [False, False, "start", "--steps 999"]},
         "script_args[3] line 1: steps: "),
    ]
    for fields, detail in cases:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a|b", **FAST, **fields})
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["detail"].startswith(detail), (detail, response.json()["detail"])


def test_sd_upscale_tiles_the_upscaled_image_and_saves_the_combined_one(client, services):
    assert tile_origins(128, 64, 32) == [0, 32, 64]
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "a tile", "init_images": [source_png()], "denoising_strength": 0.5, "seed": 9, **FAST,
        "script_name": "sd upscale", "script_args": ["", 32, "Lanczos", 2.0]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1 and decode(body["images"][0]).size == (128, 128)
    info = json.loads(body["info"])
    parsed = parse_infotext(info["infotexts"][0])
    assert (parsed["SD upscale overlap"], parsed["SD upscale upscaler"]) == ("32", "Lanczos")
    assert parsed["Size"] == "64x64" and parsed["Seed"] == "9"  # the first tile's infotext, as A1111
    saved = list((services.outputs.root / "img2img-images").rglob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (128, 128)  # the tiles are not saved
    # the upscaler by its index in the list (A1111's radio is index-typed), "None" keeps the size: one tile
    names = client.get("/sdapi/v1/script-info").json()
    choices = next(item for item in names if item["name"] == "sd upscale")["args"][2]["choices"]
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "a tile", "init_images": [source_png()], **FAST, "script_name": "sd upscale",
        "script_args": ["", 0, choices.index("None"), 1.0]})
    assert response.status_code == 200 and decode(response.json()["images"][0]).size == (64, 64)


def test_tiles_recombine_to_the_same_image():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (160, 224, 3), dtype=np.uint8))
    rows = split_tiles(image, 96, 64, 32)
    assert [len(row) for row in rows] == [3] * 4  # ceil((224 - 32) / 64) across, ceil((160 - 32) / 32) down
    assert np.array_equal(np.asarray(combine_tiles(rows, image.size, 32)), np.asarray(image))


def test_loopback_feeds_each_image_back_and_draws_a_row(client, services):
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "loop", "init_images": [source_png()], "denoising_strength": 0.5, "seed": 20, **FAST,
        "script_name": "loopback", "script_args": [3, 1.0, "Linear", "None"]})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 4 and decode(body["images"][0]).size == (192, 64)
    assert info["all_seeds"] == [20, 21, 22] and info["index_of_first_image"] == 1
    strengths = [parse_infotext(text)["Denoising strength"] for text in info["infotexts"][1:]]
    assert strengths == ["0.5", "0.75", "1"]
    last = parse_infotext(info["infotexts"][-1])
    assert (last["Final denoising strength"], last["Denoising curve"]) == ("1", "Linear")  # A1111's keys
    assert len(list((services.outputs.root / "img2img-images").rglob("*.png"))) == 3
    assert len(list((services.outputs.root / "img2img-grids").rglob("grid-*.png"))) == 1
    refused = client.post("/sdapi/v1/img2img", json={
        "prompt": "loop", "init_images": [source_png()], **FAST, "script_name": "loopback",
        "script_args": [2, 0.5, "Linear", "CLIP"]})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("script_args[3]: ")


def test_poor_mans_outpainting_inpaints_the_tiles_of_the_new_area(client, services):
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "more", "init_images": [source_png()], "denoising_strength": 0.8, "seed": 30, **FAST,
        "script_name": "poor man's outpainting", "script_args": [32, 4, 1, ["left", "right", "up", "down"]]})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1
    # 64 + 2 x 32 = 128 on each side (already a multiple of 64); tiles of 64 overlapping by 32: 3 x 3, the middle one
    # lies inside the original and is kept, so 8 tiles are inpainted with seeds 30..37 (the first tile's infotext)
    image = decode(body["images"][0])
    assert image.size == (128, 128)
    assert parse_infotext(info["infotexts"][0])["Seed"] == "30"
    centre = np.asarray(image.convert("RGB"))[56:72, 56:72].astype(int)
    original = np.asarray(decode(source_png()).convert("RGB"))[24:40, 24:40].astype(int)
    assert np.abs(centre - original).mean() < 8  # the centre is the original image (the kept middle tile)
    saved = list((services.outputs.root / "img2img-images").rglob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (128, 128)
    refused = client.post("/sdapi/v1/img2img", json={
        "prompt": "more", "init_images": [source_png()], **FAST, "script_name": "poor man's outpainting",
        "script_args": [32, 4, "fill", ["sideways"]]})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("script_args[3]: ")


def test_xyz_plot_is_in_the_menu_with_the_extensions_implementation(make_services, tmp_path):
    import shutil
    from pathlib import Path

    folder = tmp_path / "extensions"
    shutil.copytree(Path(__file__).parent.parent / "extensions" / "xyz_plot", folder / "xyz_plot",
                    ignore=shutil.ignore_patterns("__pycache__"))
    services = make_services(extensions_dir=folder)
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        listed = client.get("/sdapi/v1/scripts").json()
        assert "x/y/z plot" in listed["txt2img"] and "x/y/z plot" in listed["img2img"]
        response = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a cat", "seed": 1, **FAST, "script_name": "x/y/z plot",
            "script_args": ["Seed", "1, 2", "Steps", "1, 2", "Nothing", "", False, True]})
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [1, 2, 1, 2] and info["index_of_first_image"] == 1  # the grid is not in all_*
        assert decode(response.json()["images"][0]).size == (128, 128)  # no legend: 2 x 2 cells
        assert len(list((services.outputs.root / "txt2img-grids").rglob("grid-*.png"))) == 1
        refused = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a cat", **FAST, "script_name": "x/y/z plot", "script_args": [1, "1, 2"]})
        assert refused.status_code == 422 and refused.json()["detail"].startswith("script_args[0]: X type")


def test_matched_noise_fills_the_mask_with_the_images_colours():
    from backend.generation.scripts.matched_noise import matched_noise

    image = np.clip(np.random.default_rng(1).normal((0.7, 0.3, 0.2), 0.08, (64, 64, 3)), 0, 1)
    mask = np.zeros((64, 64))
    mask[:, 48:] = 1
    filled = matched_noise(image.copy(), mask, 1.0, 0.05)
    assert np.array_equal(filled[:, :48], image[:, :48])  # the known pixels stay
    strip = filled[:, 48:].reshape(-1, 3)
    assert np.allclose(strip.mean(axis=0), image[:, :48].reshape(-1, 3).mean(axis=0), atol=0.02)  # same histogram
    assert strip.std(axis=0).min() > 0.04  # noise, not a flat colour
    assert np.array_equal(filled, matched_noise(image.copy(), mask, 1.0, 0.05))  # a fixed seed, as A1111


def test_outpainting_mk2_grows_each_side_in_turn(client, services):
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "more", "init_images": [source_png()], "denoising_strength": 0.8, "seed": 30, **FAST,
        "script_name": "outpainting mk2", "script_args": ["", 32, 4, ["left", "down"], 1.0, 0.05]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.size == (128, 128)  # 64 + 32 on each chosen side, spread to a multiple of 64
    right = np.asarray(image.convert("RGB"))[4:40, 100:124].astype(int)
    original = np.asarray(decode(source_png()).convert("RGB"))[4:40, 36:60].astype(int)
    assert np.abs(right - original).mean() < 8  # the original, moved right by the left strip, stays
    parsed = parse_infotext(json.loads(body["info"])["infotexts"][0])
    assert parsed["Seed"] == "30" and parsed["Mask blur"] == "16"  # mask blur x 4, as A1111
    saved = list((services.outputs.root / "img2img-images").rglob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (128, 128)
    refused = client.post("/sdapi/v1/img2img", json={
        "prompt": "more", "init_images": [source_png()], **FAST, "script_name": "outpainting mk2",
        "script_args": ["", 32, 4, []]})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("script_args[3]: ")
