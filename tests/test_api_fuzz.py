"""Property-based fuzz of the A1111 REST API (/sdapi/v1) against its own OpenAPI schema, in process:
whatever a client sends, the answer is never a 5xx and its body matches the schema the API publishes.

Bounded and reproducible for CI: a fixed number of examples per operation and generation mode, derandomized
(schemathesis' fuzzing phase only; its coverage phase is not bounded by a number of examples).
Requests generated to break the schema go through untouched, so validation itself is fuzzed. Requests the schema
allows go through a `map_case` hook (`make_generation_cheap`) so that a generation job stays tiny, and half of
them are made plausible (known names, values in range, a small real image) so the generation path runs too."""
from __future__ import annotations

import base64
import io
import json
import zlib

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from backend.core.image_metadata import read_infotext
from backend.core.requests import (
    BATCH_COUNT_RANGE,
    BATCH_SIZE_RANGE,
    CFG_RANGE,
    EXTRAS_SCALE_MAX,
    EXTRAS_SIZE_MAX,
    HR_SCALE_RANGE,
    LATENT_UPSCALE_MODES,
    MAX_SEED,
    SIZE_RANGE,
    STEPS_RANGE,
)
from backend.core.samplers import SCHEDULE_NAMES, sampler_table
from backend.http.routes import build_api_router
from tests.test_image_metadata import exif_tiff

EXAMPLES_PER_OPERATION = 50  # per generation mode (valid / invalid requests)
CHECKS = [not_a_server_error, response_schema_conformance]
REQUEST_TIMEOUT_SECONDS = 30  # a tiny job takes well under a second; a timeout means a costly one slipped through

# The API's own defaults (A1111's: 512x512, 50 steps) would make an empty generation body a long job.
GENERATION_PATHS = ("/txt2img", "/img2img")
CHEAP_DEFAULTS = {"width": 128, "height": 128, "steps": 4}

# field: (cheap value, largest value the API accepts). A generated value between the two is lowered to the cheap
# one, so a valid request runs a tiny job; values outside the accepted range stay, so their 422 is fuzzed too.
CHEAP_LIMITS = {
    "width": (128, SIZE_RANGE[1]), "height": (128, SIZE_RANGE[1]),
    "steps": (4, STEPS_RANGE[1]), "hr_second_pass_steps": (4, STEPS_RANGE[1]),
    "batch_size": (2, BATCH_SIZE_RANGE[1]), "n_iter": (1, BATCH_COUNT_RANGE[1]),  # at most 2 images a job
    "hr_scale": (1.5, HR_SCALE_RANGE[1]), "hr_resize_x": (128, SIZE_RANGE[1]), "hr_resize_y": (128, SIZE_RANGE[1]),
    "upscaling_resize": (2, EXTRAS_SCALE_MAX),
    "upscaling_resize_w": (128, EXTRAS_SIZE_MAX), "upscaling_resize_h": (128, EXTRAS_SIZE_MAX),
}

# Plausible requests: numbers clamped into a range that is valid and cheap ...
PLAUSIBLE_RANGES = {
    "width": (SIZE_RANGE[0], 128), "height": (SIZE_RANGE[0], 128), "steps": (1, 4), "hr_second_pass_steps": (0, 4),
    "cfg_scale": CFG_RANGE, "seed": (-1, MAX_SEED), "batch_size": (1, 2), "n_iter": (1, 1),
    "denoising_strength": (0, 1), "hr_scale": (1, 1.5), "hr_resize_x": (0, 128), "hr_resize_y": (0, 128),
    "resize_mode": (0, 1), "mask_blur": (0, 64), "inpainting_fill": (0, 3), "inpaint_full_res_padding": (0, 256),
    "inpainting_mask_invert": (0, 1), "upscaling_resize": (0.5, 2), "upscaling_resize_w": (1, 128),
    "upscaling_resize_h": (1, 128), "extras_upscaler_2_visibility": (0, 1),
}
# ... names the server knows (a random string never is one) ...
KNOWN_NAMES = {
    "sampler_name": list(sampler_table()), "sampler_index": list(sampler_table()), "scheduler": list(SCHEDULE_NAMES),
    "hr_upscaler": [*LATENT_UPSCALE_MODES, "Lanczos", "Nearest"],
    "upscaler_1": ["Lanczos", "Nearest"], "upscaler_2": ["None", "Lanczos", "Nearest"],
}
# ... none of the fields that ask for what this version cannot do, or that name things which must exist here
# (styles, scripts, checkpoints, face models: random names are a 422 of their own, fuzzed in the other half).
UNSUPPORTED_WHEN_SET = {
    "styles", "subseed_strength", "restore_faces", "tiling", "refiner_checkpoint", "script_name", "override_settings",
    "extension_args", "alwayson_scripts", "firstphase_width", "firstphase_height", "hr_checkpoint_name",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "gfpgan_visibility",
    "codeformer_visibility", "mask_blur_x", "mask_blur_y",
    "force_task_id",  # a repeated task id is a 409
}


def _png_base64(mode: str, size: tuple[int, int], color) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SMALL_IMAGE = _png_base64("RGB", (64, 64), (200, 40, 30))
SMALL_MASK = _png_base64("L", (64, 64), 255)  # all white: inpaint everything (an all-black mask is refused)
# ... and a small real image where a request needs one (a random string is never a readable image).
SMALL_IMAGES_BY_PATH = {
    "img2img": {"init_images": [SMALL_IMAGE]}, "extra-single-image": {"image": SMALL_IMAGE},
    "png-info": {"image": SMALL_IMAGE}, "extra-batch-images": {"imageList": [{"data": SMALL_IMAGE, "name": "a.png"}]},
}
SHAPED_PATHS = tuple(f"/{name}" for name in ("txt2img", *SMALL_IMAGES_BY_PATH))


def _checksum(value) -> int:
    """Stands in for a coin toss: the same generated value always gives the same answer, so runs repeat."""
    return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cheap_number(value, cheap, accepted_max):
    return type(value)(cheap) if _is_number(value) and cheap < value <= accepted_max else value


def _clamped(value, low, high):
    return type(value)(min(max(value, low), high)) if _is_number(value) else value


def _plausible(body: dict, path: str) -> dict:
    body = {key: value for key, value in body.items() if key not in UNSUPPORTED_WHEN_SET}
    for key, (low, high) in PLAUSIBLE_RANGES.items():
        if key in body:
            body[key] = _clamped(body[key], low, high)
    for key, names in KNOWN_NAMES.items():
        if isinstance(body.get(key), str):
            body[key] = names[_checksum(body[key]) % len(names)]
    if isinstance(body.get("mask"), str):
        body["mask"] = SMALL_MASK
    return {**body, **SMALL_IMAGES_BY_PATH.get(path.rsplit("/", 1)[-1], {})}


def _cheap(body: dict, path: str) -> dict:
    """Only a missing size/steps is filled in, and only a number in the valid-but-costly band is lowered."""
    if path.endswith(GENERATION_PATHS):
        body = {**CHEAP_DEFAULTS, **body}
    return {key: _cheap_number(value, *CHEAP_LIMITS[key]) if key in CHEAP_LIMITS else value
            for key, value in body.items()}


def make_generation_cheap(context, case):
    """schemathesis `map_case` hook: every generation job stays tiny, and half of the valid bodies are made
    plausible. An invalid body keeps what makes it invalid (a wrong type: the schema declares no ranges), but
    pydantic accepts some of those (a "3" for an int, an unknown key), and then a costly job would run."""
    if not (isinstance(case.body, dict) and case.operation.path.endswith(SHAPED_PATHS)):
        return case
    case.body = _cheap(case.body, case.operation.path)
    valid = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if valid and _checksum(case.body) % 2 == 0:
        case.body = _plausible(case.body, case.operation.path)
    return case


@pytest.fixture
def app(services) -> FastAPI:
    app = FastAPI()
    app.include_router(build_api_router(services, None))
    return app


@pytest.fixture
def api_schema(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex=r"^/sdapi/v1/")
    schema.hook("map_case")(make_generation_cheap)
    return schema


def _takes_input(operation) -> bool:
    """Only an operation with parameters or a body can be sent invalid input."""
    return any(len(part) for part in (operation.path_parameters, operation.query, operation.headers,
                                      operation.cookies, operation.body))


def fuzz(operation, mode: GenerationMode) -> None:
    """Hypothesis over one operation's generated requests; raises what the first failing (shrunk) case found."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def requests_never_fail_the_checks(case):
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_SECONDS)

    requests_never_fail_the_checks()


def test_no_server_errors_and_responses_match_the_schema(api_schema):
    # One test over every operation (schemathesis' own pytest loader for fixtures does not run under pytest 9),
    # reporting every operation that fails rather than stopping at the first.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20, [operation.label for operation in operations]
    failures = []
    for operation in operations:
        for mode in GenerationMode:
            if mode == GenerationMode.NEGATIVE and not _takes_input(operation):
                continue
            try:
                fuzz(operation, mode)
            except Exception as error:  # noqa: BLE001 - each operation's failure is collected and reported
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert not failures, "\n\n".join(failures)


# Regressions: requests that answered 5xx before, as raw JSON (Python's json reads NaN, Infinity and lone
# surrogates, so a client can send them), each with the status and a word of the detail it must get now.
# Found by hand around the fuzz: its generator makes neither NaN nor lone surrogates.
REGRESSIONS = [
    pytest.param("txt2img", '{"steps": 2, "override_settings": {"sd_model_checkpoint": 5}}',
                 "override_settings.sd_model_checkpoint: must be a checkpoint title or name", id="checkpoint-not-text"),
    pytest.param("img2img", f'{{"init_images": ["{SMALL_IMAGE}"], "mask_blur_x": 1e400}}',
                 "mask_blur_x: must be a finite number; got inf", id="infinity-in-an-int-field"),
    pytest.param("png-info", '{"image": NaN}', "image: must be a finite number; got nan", id="nan-for-an-image"),
    pytest.param("txt2img", '{"steps": 2, "sampler_name": "\\ud800"}', "sampler_name: not valid Unicode text",
                 id="lone-surrogate-in-a-name"),
    pytest.param("txt2img", '{"steps": 2, "extension_args": {"\\ud800": 1}}', "extension_args: the key",
                 id="lone-surrogate-in-a-key"),
    pytest.param("options", '{"sd_model_checkpoint": "\\udfff"}', "sd_model_checkpoint: not valid Unicode text",
                 id="lone-surrogate-in-options"),
    pytest.param("options", '{"\\ud800": 1}', "body: the key", id="lone-surrogate-as-an-option-name"),
    pytest.param("txt2img", '{"steps": 2, "prompt": "a \\ud800 cat"}', "prompt: not valid Unicode text",
                 id="lone-surrogate-in-a-prompt"),  # was a 409 ("Error serializing to JSON") from the queue
    pytest.param("img2img", f'{{"init_images": ["{SMALL_IMAGE}", "{SMALL_IMAGE}"]}}',
                 "init_images: 2 images for batch_size 1", id="more-init-images-than-batch-size"),
]


@pytest.mark.parametrize("path,raw_json,detail", REGRESSIONS)
def test_former_server_errors_answer_422_naming_the_field(app, path, raw_json, detail):
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/sdapi/v1/{path}", content=raw_json, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]


# Hostile image metadata (issue 26, item 5): EXIF blocks built from random IFD entries (any tag, any TIFF type, any
# value, offsets past the end), truncated or raw bytes, in PNG eXIf / JPEG APP1 / WEBP EXIF chunks, with random
# infotext chunks; sent to the endpoints that read metadata, and to the PNG Info tab's reader. Never a 5xx.
TIFF_TYPES = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 99])
EXIF_TAGS = st.sampled_from([0x9286, 0x0112, 0x010E, 0x8769, 0x8825, 0x9003, 0xA005, 0x0100, 0x927C, 0xFFFF])
METADATA_ENDPOINTS = ["png-info", "png-info", "png-info", "extra-single-image", "extra-single-image", "img2img"]


@st.composite
def exif_blocks(draw) -> bytes:
    kind = draw(st.sampled_from(["structured", "structured", "truncated", "raw", "big-endian"]))
    if kind == "raw":
        return draw(st.binary(max_size=96))
    entries = draw(st.lists(st.tuples(EXIF_TAGS, TIFF_TYPES, st.binary(max_size=24)), max_size=6))
    first = draw(st.lists(st.tuples(EXIF_TAGS, TIFF_TYPES, st.binary(max_size=12)), max_size=3))
    block = exif_tiff(entries, first)
    if kind == "truncated":
        block = block[:draw(st.integers(0, len(block)))]
    elif kind == "big-endian":  # the same bytes claimed as Motorola order: every offset and count misread
        block = b"MM\x00*" + block[4:]
    return (b"Exif\x00\x00" if draw(st.booleans()) else b"") + block


@st.composite
def images_with_hostile_metadata(draw) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    options = {"exif": draw(exif_blocks())}
    if fmt == "PNG" and draw(st.booleans()):
        chunks = PngInfo()
        text = draw(st.one_of(st.text(max_size=300), st.just("word " * 4000),
                              st.just('k: "a, ' * 2000), st.just("a cat\nSteps: 2, Seed: x, Size: 9x9")))
        chunks.add_text("parameters", text, zip=draw(st.booleans()))
        options["pnginfo"] = chunks
    buffer = io.BytesIO()
    size = (draw(st.integers(1, 72)), draw(st.integers(1, 72)))
    mode = draw(st.sampled_from(["RGB", "L"] if fmt == "JPEG" else ["RGB", "L", "RGBA"]))
    Image.new(mode, size, 120).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def metadata_request(endpoint: str, image: str) -> dict:
    if endpoint == "img2img":
        return {"init_images": [image], "steps": 2, "denoising_strength": 0.5, "width": 64, "height": 64}
    if endpoint == "extra-single-image":
        return {"image": image, "upscaling_resize": 1, "upscaler_1": "Nearest"}
    return {"image": image}


def test_hostile_image_metadata_never_gives_a_server_error(app):
    with TestClient(app, raise_server_exceptions=False) as client:
        @given(data=images_with_hostile_metadata(), endpoint=st.sampled_from(METADATA_ENDPOINTS))
        @settings(max_examples=90, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def never_a_server_error(data, endpoint):
            with Image.open(io.BytesIO(data)) as image:  # as the PNG Info tab reads an upload
                assert read_infotext(image) is None or isinstance(read_infotext(image), str)
            answer = client.post(f"/sdapi/v1/{endpoint}",
                                 json=metadata_request(endpoint, base64.b64encode(data).decode()))
            assert answer.status_code < 500, (endpoint, answer.text)
            if endpoint == "png-info":
                assert answer.status_code == 200 and isinstance(answer.json()["info"], str), answer.text

        never_a_server_error()
