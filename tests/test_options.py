"""The user options (A1111's config.json): validation, the store, and what the saving options do to output files."""
from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from PIL import Image

from backend.core.errors import UserError
from backend.core.image_metadata import read_infotext
from backend.core.options import OPTION_NAMES, OptionError, Options, validate_options
from backend.core.options_store import OptionsStore
from backend.generation.generator import preview_period
from backend.jobs.file_names import ImageFacts, apply_pattern, file_stem, folder_parts
from backend.jobs.outputs import OutputStore

INFOTEXT = "a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x64"


@pytest.mark.parametrize("key, value, expected", [
    ("jpeg_quality", 101, "jpeg_quality: must be from 1 to 100"),
    ("jpeg_quality", "80", "jpeg_quality: must be a valid integer"),
    ("samples_format", "gif", "samples_format: must be 'png', 'jpg', 'jpeg' or 'webp'"),
    ("save_txt", 1, "save_txt: must be a valid boolean"),
    ("show_progress_every_n_steps", -2, "show_progress_every_n_steps: must be from -1 to 32"),
    ("no_such_option", True, "no_such_option: not an option this server knows"),
])
def test_a_bad_value_names_its_key_and_range(key, value, expected):
    with pytest.raises(OptionError) as caught:
        validate_options({key: value})
    assert str(caught.value).startswith(expected) and caught.value.field == key and caught.value.status == 422


def test_a1111_keys_and_defaults():
    defaults = Options().model_dump()
    assert {"samples_format": "png", "jpeg_quality": 80, "samples_filename_pattern": "", "save_to_dirs": True,
            "directories_filename_pattern": "[date]", "enable_pnginfo": True, "save_txt": False,
            "show_progress_every_n_steps": 10, "sd_checkpoints_limit": 1, "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0, "face_restoration_model": "CodeFormer", "send_seed": True,
            "return_grid": True, "grid_format": "png", "sd_vae": "Automatic"}.items() <= defaults.items()
    assert validate_options({"s_churn": 2}).s_churn == 2.0  # a JSON integer fills a float option


def test_store_round_trips_through_config_json_and_keeps_foreign_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "webp", "jpeg_quality": 500, "some_extension_key": [1, 2]}))
    store = OptionsStore(path)
    assert store.current.samples_format == "webp"
    assert store.current.jpeg_quality == 80  # out of range in the file: the default, the rest still loads
    assert store.update({"jpeg_quality": 95, "save_txt": True, "samples_format": "webp"}) == ["jpeg_quality",
                                                                                            "save_txt"]
    written = json.loads(path.read_text())
    assert written["jpeg_quality"] == 95 and written["save_txt"] is True and written["some_extension_key"] == [1, 2]
    assert set(OPTION_NAMES) <= set(written)  # one flat object with every key, as A1111 writes it
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    again = OptionsStore(path)
    assert again.current.jpeg_quality == 95 and again.current.save_txt is True


def test_a_bad_update_changes_nothing(tmp_path):
    store = OptionsStore(tmp_path / "config.json")
    store.update({"jpeg_quality": 70})
    with pytest.raises(OptionError, match="^samples_format"):
        store.update({"jpeg_quality": 60, "samples_format": "bmp"})
    assert store.current.jpeg_quality == 70 and OptionsStore(tmp_path / "config.json").current.jpeg_quality == 70


def test_flags_win_over_the_file_and_the_file_keeps_the_choice(tmp_path):
    path = tmp_path / "config.json"
    OptionsStore(path).update({"sd_checkpoints_limit": 4})
    store = OptionsStore(path, {"sd_checkpoints_limit": 2})
    assert store.current.sd_checkpoints_limit == 2 and store.stored()["sd_checkpoints_limit"] == 4
    store.update({"sd_checkpoints_limit": 5})
    assert store.current.sd_checkpoints_limit == 2 and OptionsStore(path).current.sd_checkpoints_limit == 5


def test_a_broken_config_json_starts_with_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert OptionsStore(tmp_path / "config.json").current == Options()


FACTS = ImageFacts(seed=42, prompt="a (red:1.2) cat, on/a mat?", negative_prompt="dog", steps=3, cfg_scale=7.0,
                   sampler="Euler a", width=64, height=48, model_name="tiny sd1", model_hash="abc123",
                   job_timestamp="20260102030405", now=datetime.datetime(2026, 1, 2, 3, 4, 5))


@pytest.mark.parametrize("pattern, expected", [
    ("[seed]-[prompt_spaces]", "42-a (red_1.2) cat, on_a mat_"),
    ("[prompt]", "a_(red_1.2)_cat,_on_a_mat_"),
    ("[prompt_words]", "a red 1 2 cat on a mat"),
    ("[steps]-[cfg]-[sampler]-[width]x[height]", "3-7.0-Euler a-64x48"),
    ("[model_name]-[model_hash]", "tiny sd1-abc123"),
    ("[datetime]", "20260102030405"),
    ("[datetime<%Y-%m>]", "2026-01"),
    ("[date]-[job_timestamp]", "2026-01-02-20260102030405"),
    ("[SEED]-[batch_number]", "42"),  # no batch number in a batch of one: the tag and the text before it go
    ("[not_a_tag]-[seed]", "[not_a_tag]-42"),
    ("../[seed]", ".._42"),
])
def test_file_name_patterns(pattern, expected):
    assert file_stem(pattern, FACTS) == expected


def test_folder_patterns_stay_inside():
    assert folder_parts("[date]/[model_name]", FACTS) == ["2026-01-02", "tiny sd1"]
    assert folder_parts("../../[seed]/./..", FACTS) == ["42"]
    assert folder_parts("/etc/[seed]", FACTS) == ["etc", "42"]
    assert "/" not in apply_pattern("[prompt]", FACTS)


def store_with(tmp_path, **options) -> OutputStore:
    chosen = validate_options(options)
    return OutputStore(tmp_path / "outputs", clock=lambda: datetime.date(2026, 1, 2), options=lambda: chosen)


@pytest.mark.parametrize("fmt, extension", [("jpg", ".jpg"), ("jpeg", ".jpg"), ("webp", ".webp")])
def test_jpeg_and_webp_carry_the_infotext_in_exif(tmp_path, fmt, extension):
    store = store_with(tmp_path, samples_format=fmt)
    path = store.save_image(Image.new("RGBA", (32, 24), (200, 30, 30, 255)), "txt2img", INFOTEXT, FACTS)
    assert path.suffix == extension and path.name == f"00000-42{extension}"
    assert path.parent == tmp_path / "outputs" / "txt2img-images" / "2026-01-02"
    with Image.open(path) as image:
        assert image.format == ("JPEG" if extension == ".jpg" else "WEBP") and image.size == (32, 24)
        assert read_infotext(image) == INFOTEXT
        exif = image.getexif().get_ifd(0x8769)[0x9286]
        assert exif.startswith(b"UNICODE\x00")  # A1111's (piexif's) UserComment encoding


def test_jpeg_quality_and_webp_lossless(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    low = store_with(tmp_path / "low", samples_format="jpg", jpeg_quality=10).save_image(noise, "txt2img", None, FACTS)
    high = store_with(tmp_path / "high", samples_format="jpg", jpeg_quality=95).save_image(noise, "txt2img", None,
                                                                                          FACTS)
    assert low.stat().st_size < high.stat().st_size / 2
    lossless = store_with(tmp_path / "ll", samples_format="webp", webp_lossless=True).save_image(
        noise, "txt2img", None, FACTS)
    assert np.array_equal(np.asarray(Image.open(lossless).convert("RGB")), np.asarray(noise))


def test_names_folders_sidecar_and_no_pnginfo(tmp_path):
    store = store_with(tmp_path, samples_filename_pattern="[seed]-[prompt_words]", directories_filename_pattern=
                       "[model_name]/[date]", save_txt=True, enable_pnginfo=False)
    first = store.save_image(Image.new("RGB", (8, 8)), "img2img", INFOTEXT, FACTS)
    second = store.save_image(Image.new("RGB", (8, 8)), "img2img", INFOTEXT, FACTS)
    folder = tmp_path / "outputs" / "img2img-images" / "tiny sd1" / "2026-01-02"
    assert first == folder / "00000-42-a red 1 2 cat on a mat.png" and second.name.startswith("00001-42-")
    assert first.with_suffix(".txt").read_text() == INFOTEXT + "\n"
    assert read_infotext(first) is None  # enable_pnginfo off: no parameters chunk


def test_without_numbers_or_dated_folders(tmp_path):
    store = store_with(tmp_path, save_images_add_number=False, save_to_dirs=False,
                       samples_filename_pattern="[seed]-[steps]")
    path = store.save_image(Image.new("RGB", (8, 8)), "txt2img", INFOTEXT, FACTS)
    assert path == tmp_path / "outputs" / "txt2img-images" / "42-3.png" and read_infotext(path) == INFOTEXT


def test_outdir_options(tmp_path):
    store = store_with(tmp_path, outdir_txt2img_samples="mine", save_to_dirs=False)
    assert store.save_image(Image.new("RGB", (8, 8)), "txt2img", None, FACTS).parent == tmp_path / "outputs" / "mine"
    elsewhere = str(tmp_path / "elsewhere")
    local = store_with(tmp_path, outdir_samples=elsewhere, save_to_dirs=False)
    assert local.save_image(Image.new("RGB", (8, 8)), "img2img", None, FACTS).parent == tmp_path / "elsewhere"
    exposed = OutputStore(tmp_path / "outputs", options=Options, folders_inside_root=True)
    with pytest.raises(UserError, match="^outdir_samples: must be a folder inside"):
        exposed.check_folders(validate_options({"outdir_samples": elsewhere}))
    with pytest.raises(UserError, match="^outdir_img2img_samples"):
        exposed.check_folders(validate_options({"outdir_img2img_samples": "../../escape"}))
    exposed.check_folders(validate_options({"outdir_txt2img_samples": "inside/here"}))


@pytest.mark.parametrize("options, steps, expected", [
    ({}, 20, 10), ({"show_progress_every_n_steps": 3}, 20, 3), ({"live_previews_enable": False}, 20, 0),
    ({"show_progress_every_n_steps": -1}, 20, 20), ({"show_progress_every_n_steps": 0}, 20, 0)])
def test_live_preview_options(options, steps, expected):
    assert preview_period(validate_options(options), steps) == expected
