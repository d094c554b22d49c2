"""A1111's img2img "Batch": each image of a server folder becomes one img2img request (its mask from the mask
folder, its prompts and seed from its own infotext when asked), run by the generator like any img2img job; the
results are written to the output folder under the input's name.

Every input, mask and output name is checked before the first image runs, so a missing mask or an unreadable
file fails the job at once instead of half way through the folder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from backend.core.image_input import ACCEPTED_FORMATS, MAX_INPUT_PIXELS
from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.core.requests import (
    GenerationResult,
    ImageResult,
    Img2ImgBatchRequest,
    Img2ImgRequest,
    RequestError,
    build_request,
)
from backend.jobs.outputs import OutputStore
from backend.upscale.extras import folder_images

BATCH_ONLY_FIELDS = {"init_image", "mask", "input_dir", "output_dir", "inpaint_mask_dir", "use_png_info",
                     "png_info_props"}
# A1111's PNG info properties -> the request field each sets, and how the value is read
PNG_INFO_FIELDS = {"Seed": ("seed", int), "CFG scale": ("cfg_scale", float), "Sampler": ("sampler_name", str),
                   "Steps": ("steps", int), "Model hash": ("checkpoint", str)}


@dataclass(frozen=True)
class BatchItem:
    image: Path
    mask: Path | None
    outputs: list[Path]  # where each of its results goes (batch size x batch count), or [] for the usual outputs


def plan_batch(request: Img2ImgBatchRequest) -> list[BatchItem]:
    images = folder_images(Path(request.input_dir))
    if not images:
        raise RequestError("input_dir", f"no images in {request.input_dir}")
    masks = folder_images(Path(request.inpaint_mask_dir)) if request.inpaint_mask_dir else []
    if request.inpaint_mask_dir and not masks:
        raise RequestError("inpaint_mask_dir", f"no mask images in {request.inpaint_mask_dir}")
    by_stem = {mask.stem: mask for mask in masks}
    per_image = request.batch_size * request.n_iter
    items = []
    for mask in masks:
        _check_readable(mask, "inpaint_mask_dir")
    for image in images:
        _check_readable(image, "input_dir")
        mask = None
        if masks:
            mask = masks[0] if len(masks) == 1 else by_stem.get(image.stem)  # one mask: for every image, as A1111
            if mask is None:
                raise RequestError("inpaint_mask_dir", f"no mask named {image.stem}.* for {image.name} in "
                                                       f"{request.inpaint_mask_dir}")
        items.append(BatchItem(image, mask, output_names(request, image, per_image)))
    return items


def output_names(request: Img2ImgBatchRequest, image: Path, count: int) -> list[Path]:
    """A1111's names: the input's stem, with -1, -2 ... when one input gives several images; always PNG."""
    if not request.output_dir:
        return []
    folder = Path(request.output_dir)
    if count == 1:
        return [folder / f"{image.stem}.png"]
    return [folder / f"{image.stem}-{number}.png" for number in range(1, count + 1)]


def _check_readable(path: Path, field: str):
    try:
        with Image.open(path, formats=ACCEPTED_FORMATS) as image:  # the header only; the request decodes it later
            width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise RequestError(field, f"{path.name} is not a readable image ({type(error).__name__})") from None
    if width * height > MAX_INPUT_PIXELS:
        raise RequestError(field, f"{path.name} is {width}x{height}; images may have at most {MAX_INPUT_PIXELS} "
                                  "pixels")


def item_request(request: Img2ImgBatchRequest, item: BatchItem, samplers: dict | None,
                 find_checkpoint: Callable[[str], str | None]) -> Img2ImgRequest:
    """The img2img request for one image. `find_checkpoint(model hash)`: the checkpoint title, or None."""
    fields = request.model_dump(exclude=BATCH_ONLY_FIELDS)
    fields["init_image"] = item.image.read_bytes()
    fields["mask"] = item.mask.read_bytes() if item.mask else None
    if request.use_png_info:
        fields |= png_info_fields(item.image, request, find_checkpoint)
    if item.outputs:
        fields["save_images"] = False  # written under the input's name instead
    try:
        return build_request(Img2ImgRequest, fields, samplers)
    except RequestError as error:
        raise RequestError(error.field, f"{item.image.name}: {error.message}") from None


def png_info_fields(image: Path, request: Img2ImgBatchRequest,
                    find_checkpoint: Callable[[str], str | None]) -> dict:
    """A1111's "Append png info to prompts": prompts from the image's infotext are appended to the request's;
    seed, CFG scale, sampler, steps and model (by hash) replace the request's. Only `png_info_props` are taken."""
    try:
        with Image.open(image, formats=ACCEPTED_FORMATS) as opened:
            text = read_infotext(opened)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        text = None
    if not text:
        return {}
    parsed = {key: value for key, value in parse_infotext(text).items() if key in request.png_info_props}
    fields: dict = {}
    for key, field in (("Prompt", "prompt"), ("Negative prompt", "negative_prompt")):
        if parsed.get(key):
            mine = getattr(request, field)
            fields[field] = f"{mine} {parsed[key]}" if mine else parsed[key]
    for key, (field, convert) in PNG_INFO_FIELDS.items():
        if key not in parsed:
            continue
        try:
            value = convert(parsed[key])
        except ValueError:
            continue  # a malformed value is left out rather than guessed
        if field == "checkpoint":
            value = find_checkpoint(value)
            if value is None:
                continue  # a model this server does not have: keep the request's, as A1111 does
        fields[field] = value
    return fields


def write_results(result: GenerationResult, item: BatchItem, outputs: OutputStore) -> list[ImageResult]:
    """The item's images written under their batch names (atomically, replacing an older result, as A1111)."""
    if not item.outputs:
        return list(result.images)
    return [image.model_copy(update={"path": str(outputs.write_png_to(image.png, path))})
            for image, path in zip(result.images, item.outputs)]
