"""The extension loader and hook API, in process: every hook of a throw-away extension, and broken ones."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from backend.core.infotext import parse_infotext
from backend.core.requests import ExtrasRequest, Txt2ImgRequest
from tests.conftest import FAST
from tests.extension_fixtures import write_extensions


@pytest.fixture
def extensions_dir(tmp_path):
    return write_extensions(tmp_path / "extensions")


@pytest.fixture
def ext_services(make_services, extensions_dir):
    return make_services(extensions_dir=extensions_dir)


def calls(extensions_dir, kind=None) -> list[dict]:
    log = extensions_dir / "probe" / "calls.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [line for line in lines if kind is None or line["kind"] == kind]


def run(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**FAST, "seed": 5, **fields}), timeout=300)
    assert job.status == "done", job.error
    return job.result


def test_loading_reports_each_extension_and_skips_the_broken_ones(ext_services):
    records = {record.name: record for record in ext_services.extensions.records}
    assert sorted(records) == ["broken_hook", "broken_import", "broken_register", "not_a_package", "old", "probe"]
    assert records["probe"].loaded and records["probe"].version == "0.3" and records["probe"].error is None
    assert records["probe"].load_seconds is not None
    assert "needs a package that is not installed" in records["broken_import"].error
    assert "register failed half way" in records["broken_register"].error
    assert "no __init__.py" in records["not_a_package"].error
    assert not records["old"].enabled and not records["old"].loaded and records["old"].error is None
    hooks = ext_services.extensions.hooks
    assert {hook.extension for hook in hooks.before_generate} == {"probe"}  # broken_register's was taken back


def test_every_hook_runs_and_section_values_arrive_in_extension_args(ext_services, extensions_dir):
    result = run(ext_services, prompt="a cat", steps=3, extension_args={"probe": {"note": "change", "strength": 0.5}})
    (image,) = result.images
    parameters = parse_infotext(image.infotext)
    assert parameters["Prompt"] == "a cat, probed"  # changed by the before-generate hook
    assert parameters["Probe note"] == "change"  # added by the before-save hook
    (before,) = calls(extensions_dir, "before")
    assert before["args"] == {"note": "change", "strength": 0.5} and before["seed"] == 5
    steps = calls(extensions_dir, "step")
    assert [s["step"] for s in steps] == [1, 2, 3] and steps[0]["steps"] == 3 and len(steps[0]["shape"]) == 4
    assert calls(extensions_dir, "after") == [{"kind": "after", "images": 1}]
    assert any("this hook always fails" in e for e in ext_services.extensions.hooks.hook_errors["broken_hook"])


def test_random_seed_is_fixed_before_hooks_see_it(ext_services, extensions_dir):
    result = run(ext_services, prompt="a cat", seed=-1)
    (before,) = calls(extensions_dir, "before")
    assert before["seed"] == result.images[0].seed != -1


def test_generation_wrapper_runs_several_generations(ext_services):
    result = run(ext_services, prompt="a cat", extension_args={"probe": {"note": "twice"}})
    assert [image.seed for image in result.images] == [5, 105]
    first, second = (Image.open(io.BytesIO(image.png)) for image in result.images)
    assert list(first.getdata()) != list(second.getdata())


def test_registered_upscaler_is_listed_and_used(ext_services):
    assert "Probe resize" in ext_services.upscalers.names()
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 30)).save(buffer, format="PNG")
    job = ext_services.jobs.run_and_wait(ExtrasRequest(images=[buffer.getvalue()], upscaler_1="Probe resize",
                                                       upscaling_resize=2, save_images=False), timeout=120)
    assert job.status == "done", job.error
    upscaled = Image.open(io.BytesIO(job.result.images[0].png))
    assert upscaled.size == (32, 16) and upscaled.getpixel((5, 5)) == (10, 200, 30)


def test_disabling_is_remembered_across_restarts(make_services, extensions_dir):
    first = make_services(extensions_dir=extensions_dir)
    first.extensions.set_enabled("probe", False)
    second = make_services(extensions_dir=extensions_dir)
    probe = next(record for record in second.extensions.records if record.name == "probe")
    assert not probe.enabled and not probe.loaded
    assert not second.extensions.hooks.before_generate
    second.extensions.set_enabled("probe", True)
    third = make_services(extensions_dir=extensions_dir)
    assert next(record for record in third.extensions.records if record.name == "probe").loaded


def test_registered_sampler_is_listed_accepted_and_used(ext_services):
    from backend.core.requests import RequestError, build_request

    samplers = ext_services.extensions.hooks.sampler_specs()
    assert list(samplers) == ["Probe Euler"]
    fields = {**FAST, "prompt": "a cat", "seed": 5, "save_images": False}
    request = build_request(Txt2ImgRequest, {**fields, "sampler_name": "Probe Euler"}, samplers)
    with pytest.raises(RequestError, match="unknown sampler 'Probe Euler'"):
        build_request(Txt2ImgRequest, {**fields, "sampler_name": "Probe Euler"})  # without the extension
    probe = ext_services.jobs.run_and_wait(request, timeout=300)
    assert probe.status == "done", probe.error
    assert parse_infotext(probe.result.images[0].infotext)["Sampler"] == "Probe Euler"
    euler = run(ext_services, prompt="a cat", sampler_name="Euler")
    assert probe.result.images[0].png != euler.images[0].png  # trailing spacing: other timesteps, other pixels
