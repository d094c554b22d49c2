"""img2img, inpainting and outpainting through the job queue, with pixel-exact checks."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from backend.core.requests import Img2ImgRequest, RequestError, build_request
from backend.generation.image_ops import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    RESIZE_AND_FILL,
    binary_mask,
    mask_crop_region,
    resize_image,
)
from tools.tiny_models import write_tiny_checkpoint

SIZE = 64


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int = 0) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (200, 40, 30) if seed == 0 else (30, 160, 60))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(20, 40, 220))
    return image


def quarter_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE // 2))
    return mask


def run(services, **fields):
    values = {"init_image": png(picture()), "steps": 4, "width": SIZE, "height": SIZE, "seed": 7,
              "denoising_strength": 0.8, **fields}
    job = services.jobs.run_and_wait(Img2ImgRequest(**values), timeout=300)
    assert job.status == "done", job.error
    image = job.result.images[0]
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=np.int16), image


def test_strength_zero_returns_the_input(services):
    pixels, _ = run(services, denoising_strength=0.0)
    assert np.array_equal(pixels, np.asarray(picture(), dtype=np.int16))


def test_strength_one_ignores_the_input_and_seeds_reproduce(services):
    first, _ = run(services, denoising_strength=1.0)
    other_input, _ = run(services, denoising_strength=1.0, init_image=png(picture(seed=1)))
    assert np.array_equal(first, other_input)
    half, _ = run(services, denoising_strength=0.5)
    half_again, _ = run(services, denoising_strength=0.5)
    half_other_seed, _ = run(services, denoising_strength=0.5, seed=8)
    assert np.array_equal(half, half_again)
    assert np.abs(half - half_other_seed).mean() > 0.5
    half_other_input, _ = run(services, denoising_strength=0.5, init_image=png(picture(seed=1)))
    assert np.abs(half - half_other_input).mean() > 1.0  # below full strength the input matters


def test_inpaint_keeps_every_pixel_outside_the_blurred_mask(services):
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, mask=png(quarter_mask()), mask_blur=4)
    alpha = np.asarray(quarter_mask().filter(ImageFilter.GaussianBlur(4)))
    outside = alpha == 0
    assert outside.sum() > SIZE * SIZE / 2
    assert np.array_equal(pixels[outside], original[outside])
    inside = np.asarray(quarter_mask()) == 255
    assert np.abs(pixels[inside] - original[inside]).mean() > 10
    assert "Mask blur: 4" in image.infotext and "Denoising strength: 0.8" in image.infotext
    assert "/img2img-images/" in image.path


def test_inverted_mask_does_the_opposite(services):
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, mask=png(quarter_mask()), mask_blur=0, inpainting_mask_invert=1)
    quarter = np.asarray(quarter_mask()) == 255
    assert np.array_equal(pixels[quarter], original[quarter])
    assert np.abs(pixels[~quarter] - original[~quarter]).mean() > 10
    assert "Mask mode: Inpaint not masked" in image.infotext


@pytest.mark.parametrize("fill,name", [(0, "fill"), (2, "latent noise"), (3, "latent nothing")])
def test_masked_content_modes_change_only_the_mask(services, fill, name):
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, mask=png(quarter_mask()), mask_blur=0, inpainting_fill=fill)
    quarter = np.asarray(quarter_mask()) == 255
    assert np.array_equal(pixels[~quarter], original[~quarter])
    assert np.abs(pixels[quarter] - original[quarter]).mean() > 5
    assert f"Masked content: {name}" in image.infotext


def test_only_masked_crops_generates_and_pastes_back_in_place(services):
    small = Image.new("L", (SIZE, SIZE), 0)
    small.paste(255, (40, 8, 52, 20))  # a 12x12 patch near the top right
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, mask=png(small), mask_blur=0, inpaint_full_res=True, inpaint_full_res_padding=4)
    region = mask_crop_region(small, 4, SIZE, SIZE)
    assert region == (36, 4, 56, 24)
    changed = np.abs(pixels - original).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() >= 40 and xs.max() < 52 and ys.min() >= 8 and ys.max() < 20
    assert "Inpaint area: Only masked" in image.infotext and "Masked area padding: 4" in image.infotext


def test_nine_channel_inpainting_checkpoint(services, models_dir):
    write_tiny_checkpoint(models_dir / "Stable-diffusion" / "tiny-inpainting.safetensors", "sd1", seed=5,
                          inpainting=True)
    services.models.refresh()
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, mask=png(quarter_mask()), mask_blur=0, checkpoint="tiny-inpainting.safetensors")
    quarter = np.asarray(quarter_mask()) == 255
    assert np.array_equal(pixels[~quarter], original[~quarter])
    assert np.abs(pixels[quarter] - original[quarter]).mean() > 5
    job = services.jobs.run_and_wait(Img2ImgRequest(init_image=png(picture()), steps=2, width=SIZE, height=SIZE,
                                                    checkpoint="tiny-inpainting.safetensors"), timeout=120)
    assert job.status == "failed" and "inpainting model" in job.error


def test_outpaint_grows_the_canvas_and_keeps_the_original(services):
    original = np.asarray(picture(), dtype=np.int16)
    pixels, image = run(services, outpaint_left=16, outpaint_down=8, denoising_strength=1.0)  # mask blur 4
    assert pixels.shape == (SIZE + 8, SIZE + 16, 3)
    # As in A1111, the repainted area reaches 2 x mask blur into the image and the blurred mask blends across the
    # seam; beyond that blend the original comes back exactly.
    blend = 2 * 4 + 12
    assert np.array_equal(pixels[:SIZE - blend, 16 + blend:], original[:SIZE - blend, blend:])
    assert not np.array_equal(pixels[:SIZE, 16:18], original[:, :2])  # the seam itself was blended
    assert "Size: 80x72" in image.infotext and 'Outpaint: "left 16, right 0, up 0, down 8"' in image.infotext


def test_outpaint_fills_the_new_area_from_the_edges_and_masks_across_the_seam():
    from backend.generation.image_ops import outpaint_canvas

    image = Image.new("RGB", (32, 32), (200, 40, 30))
    image.paste((20, 40, 220), (0, 16, 32, 32))  # red above, blue below
    canvas, mask = outpaint_canvas(image, left=0, right=16, up=0, down=0, mask_blur=4)
    pixels = np.asarray(canvas, dtype=np.int16)
    assert canvas.size == (48, 32) and np.array_equal(pixels[:, :32], np.asarray(image, dtype=np.int16))
    # A1111's fill: next to the seam the new area continues the edge's colours, further out it blends them smoothly;
    # no copy of the image's content, no colour that is not a mix of the image's own
    assert np.abs(pixels[2, 32] - (200, 40, 30)).max() < 8 and np.abs(pixels[29, 32] - (20, 40, 220)).max() < 8
    new_area = pixels[:, 32:]
    assert (new_area >= (20 - 2, 40 - 2, 30 - 2)).all() and (new_area <= (200 + 2, 40 + 2, 220 + 2)).all()
    assert np.abs(np.diff(new_area, axis=0)).max() < 32 and np.abs(np.diff(new_area, axis=1)).max() < 24  # smooth
    white = np.asarray(mask) == 255
    assert white[:, 24:].all() and not white[:, :24].any()  # the new area plus 2 x 4 px into the image
    _, unblurred = outpaint_canvas(image, left=0, right=16, up=0, down=0, mask_blur=0)
    assert (np.asarray(unblurred) == 255)[:, 32:].all() and not (np.asarray(unblurred) == 255)[:, :32].any()


def test_mask_of_another_size_is_resized_and_logged(services, caplog):
    big_mask = quarter_mask().resize((SIZE * 2, SIZE * 2), Image.NEAREST)
    with caplog.at_level(logging.INFO, logger="backend.generation.img2img"):
        pixels, _ = run(services, mask=png(big_mask), mask_blur=0)
    assert "resizing the mask to the image" in caplog.text
    quarter = np.asarray(quarter_mask()) == 255
    assert np.array_equal(pixels[~quarter], np.asarray(picture(), dtype=np.int16)[~quarter])


@pytest.mark.parametrize("fields,field,message", [
    ({"init_image": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}, "init_image", "PNG, JPEG, WEBP"),
    ({"denoising_strength": 1.5}, "denoising_strength", "between 0 and 1"),
    ({"denoising_strength": float("nan")}, "denoising_strength", "finite"),
    ({"outpaint_left": 12}, "outpaint_left", "multiple of 8"),
    ({"mask": b"not an image"}, "mask", "PNG, JPEG, WEBP"),
    ({"resize_mode": 3}, "resize_mode", "between 0 and 2"),
])
def test_bad_img2img_input(fields, field, message):
    with pytest.raises(RequestError) as error:
        build_request(Img2ImgRequest, {"init_image": png(picture()), **fields})
    assert error.value.field == field and message in str(error.value)


def test_empty_mask_is_refused_and_queue_keeps_going(services):
    job = services.jobs.run_and_wait(Img2ImgRequest(init_image=png(picture()), mask=png(Image.new("L", (SIZE, SIZE))),
                                                    steps=2, width=SIZE, height=SIZE), timeout=120)
    assert job.status == "failed" and job.error.startswith("mask: the mask is empty")
    pixels, _ = run(services, denoising_strength=0.0)
    assert pixels.shape == (SIZE, SIZE, 3)


def test_resize_modes():
    wide = Image.new("RGB", (100, 50), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 10, 50))  # a blue band on the left edge
    assert resize_image(wide, 64, 64, JUST_RESIZE).size == (64, 64)
    cropped = np.asarray(resize_image(wide, 64, 64, CROP_AND_RESIZE))
    assert cropped.shape == (64, 64, 3) and cropped[:, 0, 2].max() < 100  # the blue band was cut away
    filled = np.asarray(resize_image(wide, 64, 64, RESIZE_AND_FILL))
    assert filled.shape == (64, 64, 3)
    assert np.array_equal(filled[0, 40], filled[20, 40])  # top band repeats the image's first row
    assert binary_mask(Image.new("L", (4, 4), 200), invert=True).getbbox() is None


def test_mask_blur_can_differ_horizontally_and_vertically():
    from backend.generation.image_ops import blur_mask

    mask = Image.new("L", (41, 41), 0)
    mask.putpixel((20, 20), 255)
    vertical = np.asarray(blur_mask(mask, 0, 4), dtype=np.float32)
    horizontal = np.asarray(blur_mask(mask, 4, 0), dtype=np.float32)
    assert vertical[16, 20] > 0 and vertical[20, 16] == 0  # spread along the column only
    assert horizontal[20, 16] > 0 and horizontal[16, 20] == 0
    assert np.array_equal(vertical, horizontal.T)
