"""Prompt styles (A1111's styles.csv): the store, applying styles to a job's prompts, finding them again in pasted
infotext, and the REST API's `styles` and /prompt-styles."""
from __future__ import annotations

import base64
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.core.infotext import parse_infotext
from backend.http.routes import build_api_router
from backend.prompts.styles import PromptStyle, StyleError, StyleStore, apply_styles, extract_styles, merge_prompt

FAST = {"steps": 2, "width": 64, "height": 64}
CSV = ('name,prompt,negative_prompt\n'
       'Cinematic,"{prompt}, film grain",blurry\n'
       'Oil,oil painting,"photo, 3d"\n'
       'Empty,,\n')


def test_merge_puts_the_prompt_at_the_placeholder_or_appends_with_a_comma():
    assert merge_prompt("{prompt}, film grain", "a cat") == "a cat, film grain"
    assert merge_prompt("masterpiece, {prompt}", "a cat") == "masterpiece, a cat"
    assert merge_prompt("oil painting", "a cat ") == "a cat, oil painting"
    assert merge_prompt("oil painting", "") == "oil painting"
    assert merge_prompt("", "a cat") == "a cat"


def test_styles_apply_in_order_and_are_found_again_in_that_order():
    styles = [PromptStyle("Oil", "oil painting", "photo, 3d"), PromptStyle("Cinematic", "{prompt}, film grain",
                                                                            "blurry")]
    prompt, negative = apply_styles("a cat", "ugly", styles)
    assert (prompt, negative) == ("a cat, oil painting, film grain", "ugly, photo, 3d, blurry")
    assert extract_styles(prompt, negative, list(reversed(styles))) == (["Oil", "Cinematic"], "a cat", "ugly")
    # a prompt that does not end with a style's text keeps it and finds nothing
    assert extract_styles("a cat, oil", "ugly", styles) == ([], "a cat, oil", "ugly")


def test_store_reads_a1111_csv_and_writes_it_back_atomically(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    store = StyleStore(path)
    assert store.names() == ["Cinematic", "Oil", "Empty"]
    store.save(PromptStyle("Oil", "oil painting, thick paint", 'with "quotes", commas'))
    store.save(PromptStyle("New", "line one\nline two", ""))
    assert store.delete("Empty") and not store.delete("nope")
    reread = StyleStore(path).all()
    assert reread == [PromptStyle("Cinematic", "{prompt}, film grain", "blurry"),
                      PromptStyle("Oil", "oil painting, thick paint", 'with "quotes", commas'),
                      PromptStyle("New", "line one\nline two", "")]
    assert path.read_text().splitlines()[0] == "name,prompt,negative_prompt"
    assert [p.name for p in tmp_path.iterdir()] == ["styles.csv"]  # no temp file left behind


def test_store_refuses_unknown_styles_and_bad_names(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")
    assert store.all() == []  # no file yet: no styles
    with pytest.raises(StyleError, match="styles: unknown style 'Missing'"):
        store.resolve(["Missing"])
    with pytest.raises(StyleError, match="^name: "):
        store.save(PromptStyle("  ", "x"))


@pytest.fixture
def client(make_services):
    services = make_services()
    services.styles.path.write_text(CSV, encoding="utf-8")
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as http:
        yield http


def test_rest_styles_are_applied_recorded_and_listed(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "negative_prompt": "ugly", "seed": 5,
                                                      "styles": ["Oil", "Cinematic"], **FAST})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["styles"] == ["Oil", "Cinematic"]
    assert info["prompt"] == "a cat, oil painting, film grain"
    assert info["negative_prompt"] == "ugly, photo, 3d, blurry"
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Prompt"] == "a cat, oil painting, film grain"
    assert "Styles" not in parsed  # A1111 1.x writes no Styles key: the styles are found from the prompt

    # PNG Info finds them again, as A1111's default "Apply if any" does
    pnginfo = client.post("/sdapi/v1/png-info", json={"image": response.json()["images"][0]}).json()
    assert pnginfo["parameters"]["Styles array"] == ["Oil", "Cinematic"]
    assert pnginfo["parameters"]["Prompt"] == "a cat"
    assert pnginfo["parameters"]["Negative prompt"] == "ugly"

    listed = client.get("/sdapi/v1/prompt-styles").json()
    assert listed[0] == {"name": "Cinematic", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}
    assert [item["name"] for item in listed] == ["Cinematic", "Oil", "Empty"]


def test_rest_unknown_style_is_a_422_naming_the_field(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "styles": ["Nope"], **FAST})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("styles: unknown style 'Nope'")


def test_rest_img2img_applies_styles(client):
    source = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, **FAST}).json()["images"][0]
    response = client.post("/sdapi/v1/img2img", json={"prompt": "a dog", "styles": ["Oil"], "init_images": [source],
                                                      "denoising_strength": 0.5, **FAST})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["styles"] == ["Oil"] and info["all_prompts"] == ["a dog, oil painting"]
    assert base64.b64decode(response.json()["images"][0])[:4] == b"\x89PNG"
