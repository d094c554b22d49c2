"""img2img Batch (A1111's sub-tab): a server folder in, results under the inputs' names, masks matched by name,
prompts and seed from each input's infotext, and the server-folder rule."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.core.requests import Img2ImgBatchRequest, Img2ImgRequest, RequestError, build_request

SIZE = 64
FAST = {"steps": 2, "width": SIZE, "height": SIZE, "seed": 7, "denoising_strength": 0.6}


def picture(colour) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), colour)
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(20, 40, 220))
    return image


def save(image: Image.Image, path, infotext: str | None = None):
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    image.save(path, pnginfo=info)


def pixels(data_or_path) -> np.ndarray:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    return np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)


@pytest.fixture
def folders(tmp_path):
    inputs, outputs, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    inputs.mkdir()
    masks.mkdir()
    save(picture((200, 40, 30)), inputs / "red.png")
    save(picture((30, 160, 60)), inputs / "green.png", "a forest\nNegative prompt: fog\n"
                                                      "Steps: 3, Sampler: Euler, CFG scale: 4, Seed: 99, Size: 64x64")
    return inputs, outputs, masks


def run_batch(services, **fields):
    job = services.jobs.run_and_wait(Img2ImgBatchRequest(**{**FAST, **fields}), timeout=300)
    assert job.status == "done", job.error
    return job


def run_single(services, path, **fields):
    job = services.jobs.run_and_wait(Img2ImgRequest(init_image=path.read_bytes(), **{**FAST, **fields}), timeout=300)
    assert job.status == "done", job.error
    return job.result.images[0]


def test_results_keep_the_input_names_and_equal_single_img2img(services, folders):
    inputs, outputs, _ = folders
    job = run_batch(services, prompt="a ball", input_dir=str(inputs), output_dir=str(outputs))
    assert sorted(path.name for path in outputs.iterdir()) == ["green.png", "red.png"]
    assert [image.path for image in job.result.images] == [str(outputs / "green.png"), str(outputs / "red.png")]
    # the same settings as a plain img2img job give the same pixels (the seed is the request's for each image)
    single = run_single(services, inputs / "red.png", prompt="a ball")
    assert np.array_equal(pixels(outputs / "red.png"), pixels(single.png))
    assert "Seed: 7" in read_infotext(outputs / "red.png")
    # written to the chosen folder instead of the usual outputs, which get only the single job's image
    assert len(list((services.settings.outputs_dir / "img2img-images").rglob("*.png"))) == 1


def test_several_images_per_input_are_numbered(services, folders):
    inputs, outputs, _ = folders
    (inputs / "green.png").unlink()
    run_batch(services, input_dir=str(inputs), output_dir=str(outputs), batch_size=2)
    assert sorted(path.name for path in outputs.iterdir()) == ["red-1.png", "red-2.png"]


def test_png_info_appends_prompts_and_takes_seed_steps_and_cfg(services, folders):
    inputs, outputs, _ = folders
    job = run_batch(services, prompt="painting", input_dir=str(inputs), output_dir=str(outputs), use_png_info=True)
    green = parse_infotext(read_infotext(outputs / "green.png"))
    assert (green["Prompt"], green["Negative prompt"]) == ("painting a forest", "fog")
    assert (green["Seed"], green["Steps"], green["CFG scale"], green["Sampler"]) == ("99", "3", "4", "Euler")
    red = parse_infotext(read_infotext(outputs / "red.png"))  # no infotext: the request's settings
    assert (red["Prompt"], red["Seed"], red["Steps"]) == ("painting", "7", "2")
    assert [image.seed for image in job.result.images] == [99, 7]
    # only the chosen properties are taken
    run_batch(services, prompt="painting", input_dir=str(inputs), output_dir=str(outputs), use_png_info=True,
              png_info_props=["Seed"])
    green = parse_infotext(read_infotext(outputs / "green.png"))
    assert (green["Prompt"], green["Seed"], green["Steps"]) == ("painting", "99", "2")


def test_masks_are_matched_by_file_name(services, folders):
    inputs, outputs, masks = folders
    top = Image.new("L", (SIZE, SIZE), 0)
    top.paste(255, (0, 0, SIZE, SIZE // 2))
    top.save(masks / "red.png")
    Image.new("L", (SIZE, SIZE), 255).save(masks / "green.png")
    run_batch(services, input_dir=str(inputs), output_dir=str(outputs), inpaint_mask_dir=str(masks),
              denoising_strength=1.0)
    red = pixels(outputs / "red.png")
    # each image is inpainted with its own mask: the same pixels as a single inpaint job with that mask
    single = run_single(services, inputs / "red.png", mask=(masks / "red.png").read_bytes(), denoising_strength=1.0)
    assert np.array_equal(red, pixels(single.png))
    original = np.asarray(picture((200, 40, 30)), dtype=np.int16)
    assert np.abs(red[-8:] - original[-8:]).max() <= 1  # unmasked: the input's (up to the blur's rounding)
    assert np.abs(red[:SIZE // 2 - 8] - original[:SIZE // 2 - 8]).mean() > 5
    green = pixels(outputs / "green.png")  # all white: changed everywhere
    assert np.abs(green[-8:] - np.asarray(picture((30, 160, 60)), dtype=np.int16)[-8:]).mean() > 5


def test_a_missing_mask_fails_before_any_image_is_made(services, folders):
    inputs, outputs, masks = folders
    Image.new("L", (SIZE, SIZE), 255).save(masks / "red.png")
    Image.new("L", (SIZE, SIZE), 255).save(masks / "other.png")
    job = services.jobs.run_and_wait(Img2ImgBatchRequest(**FAST, input_dir=str(inputs), output_dir=str(outputs),
                                                         inpaint_mask_dir=str(masks)), timeout=300)
    assert job.status == "failed" and job.error_field == "inpaint_mask_dir" and "green.png" in job.error
    assert not outputs.exists()


def test_server_folders_are_refused_when_the_server_is_shared(make_services, folders):
    inputs, outputs, _ = folders
    services = make_services(server_folders_refused="reading folders on the server is off (--listen/--share)")
    job = services.jobs.run_and_wait(Img2ImgBatchRequest(**FAST, input_dir=str(inputs), output_dir=str(outputs)),
                                     timeout=120)
    assert job.status == "failed" and job.error_field == "input_dir" and "--listen/--share" in job.error
    assert not outputs.exists()


def test_bad_batch_requests_name_the_field(tmp_path):
    with pytest.raises(RequestError, match="input_dir: not a folder on the server"):
        build_request(Img2ImgBatchRequest, {"input_dir": str(tmp_path / "missing")})
    with pytest.raises(RequestError, match="png_info_props: unknown"):
        build_request(Img2ImgBatchRequest, {"input_dir": str(tmp_path), "png_info_props": ["Colour"]})
    with pytest.raises(RequestError, match="init_image: a batch takes its images from input_dir"):
        build_request(Img2ImgBatchRequest, {"input_dir": str(tmp_path), "init_image": b"x"})


def test_an_unreadable_file_in_the_folder_fails_before_any_image_is_made(services, folders):
    inputs, outputs, _ = folders
    (inputs / "notes.png").write_text("not an image")
    job = services.jobs.run_and_wait(Img2ImgBatchRequest(**FAST, input_dir=str(inputs), output_dir=str(outputs)),
                                     timeout=300)
    assert job.status == "failed" and job.error_field == "input_dir" and "notes.png" in job.error
    assert not outputs.exists()


def test_progress_runs_once_over_the_whole_folder(services, folders):
    """Image k of N: the progress climbs from 0 to 1 over all the inputs (before: it went back to 0 for each)."""
    from backend.jobs.queue import JobProgress
    from ui.progress_view import render_progress

    inputs, outputs, _ = folders
    save(picture((90, 90, 200)), inputs / "blue.png")
    seen = []

    class Recording(JobProgress):
        def note_step(self):
            super().note_step()
            seen.append((self.part, self.parts, self.fraction))

    progress = Recording()
    request = build_request(Img2ImgBatchRequest, {**FAST, "input_dir": str(inputs), "output_dir": str(outputs)})
    services.generator.img2img_batch(request, progress)
    fractions = [fraction for _, _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sorted({part for part, _, _ in seen}) == [0, 1, 2] and {parts for _, parts, _ in seen} == {3}
    # the first image's steps take the bar to a third, not to the end
    assert max(fraction for part, _, fraction in seen if part == 0) == pytest.approx(1 / 3)

    class Running:
        status = "running"

    job = Running()
    job.progress = progress
    progress.part = 1
    assert "image 2/3" in render_progress(job)
