"""The upscale ("Extras") job: every source image upscaled with Upscaler 1 (optionally blended with
Upscaler 2), then its faces restored when GFPGAN visibility is set (A1111's order), saved to
outputs/extras-images/YYYY-MM-DD/ with the source's infotext kept, as A1111 does.

All sources are opened and their result sizes checked before the first image is upscaled, so a bad file
or an oversized target fails the job at once instead of half way through a folder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from backend.core.errors import BatchSkipped, JobInterrupted
from backend.core.image_input import ACCEPTED_FORMATS, open_image
from backend.core.image_metadata import read_infotext
from backend.core.infotext import format_number, parse_infotext, quote
from backend.core.requests import ExtrasRequest, GenerationResult, ImageResult, RequestError
from backend.jobs.outputs import OutputStore, encode_png
from backend.jobs.queue import JobProgress
from backend.upscale.face_restoration import FaceRestorers
from backend.upscale.service import Upscalers

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class Source:
    name: str  # for messages: "image 2" or the file name
    size: tuple[int, int]
    load: Callable[[], Image.Image]


@dataclass(frozen=True)
class Target:
    upscale_to: tuple[int, int]  # what the upscalers produce
    crop: tuple[int, int, int, int] | None  # then cut to this box (resize mode 1 with crop)
    info: dict  # A1111's "Postprocess ..." keys describing the size


def folder_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))


def sources(request: ExtrasRequest) -> list[Source]:
    if request.images:
        return [_bytes_source(f"image {number}", data) for number, data in enumerate(request.images, 1)]
    folder = Path(request.input_dir)
    files = folder_images(folder)
    if not files:
        raise RequestError("input_dir", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [_file_source(path) for path in files]


def _bytes_source(name: str, data: bytes) -> Source:
    image = open_image(data)
    return Source(name=name, size=image.size, load=lambda: open_image(data))


def _file_source(path: Path) -> Source:
    try:
        # header only: the pixels are read (and checked) when the image's turn comes
        with Image.open(path, formats=ACCEPTED_FORMATS) as image:
            size = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise RequestError("input_dir", f"{path.name} is not a readable image ({type(error).__name__})") from None
    return Source(name=path.name, size=size, load=lambda: open_image(path.read_bytes()))


def target_for(request: ExtrasRequest, size: tuple[int, int]) -> Target:
    width, height = size
    if request.resize_mode == 0:
        scale = request.upscaling_resize
        return Target((max(1, round(width * scale)), max(1, round(height * scale))), None,
                      {"Postprocess upscale by": scale})
    target_width, target_height = request.upscaling_resize_w, request.upscaling_resize_h
    scale = max(target_width / width, target_height / height)  # cover the target, keeping the aspect ratio
    cover = (max(target_width, round(width * scale)), max(target_height, round(height * scale)))
    info = {"Postprocess upscale to": f"{target_width}x{target_height}"}
    if not request.upscaling_crop:
        return Target(cover, None, info)
    left, top = (cover[0] - target_width) // 2, (cover[1] - target_height) // 2
    info["Postprocess crop to"] = f"{target_width}x{target_height}"
    return Target(cover, (left, top, left + target_width, top + target_height), info)


def check_request(request: ExtrasRequest, upscalers: Upscalers, faces: FaceRestorers | None = None) -> list[Source]:
    """Everything that can be checked before upscaling: names, face models, sources, result sizes. Returns the
    sources. Upscaler "None" (A1111's default) without face restoration leaves the images as they are."""
    if request.upscales:
        upscalers.resolve(request.upscaler_1, "upscaler_1")
    if request.upscales and request.upscaler_2 != "None":
        upscalers.resolve(request.upscaler_2, "upscaler_2")
    _check_face_models(request, faces)
    found = sources(request)
    if not request.upscales:
        return found
    limit = upscalers.settings.max_upscale_size
    field = "upscaling_resize" if request.resize_mode == 0 else "upscaling_resize_w"
    for source in found:
        width, height = target_for(request, source.size).upscale_to
        if max(width, height) > limit:
            raise RequestError(field, f"{source.name} ({source.size[0]}x{source.size[1]}) would become "
                                      f"{width}x{height}; the largest side allowed is {limit} pixels")
    return found


def _check_face_models(request: ExtrasRequest, faces: FaceRestorers | None):
    if not request.restores_faces:
        return
    if faces is None:
        raise RequestError("gfpgan_visibility", "face restoration is not available in this server")
    if request.codeformer_visibility > 0:
        faces.model_path("CodeFormer", "codeformer_visibility")
    if request.gfpgan_visibility > 0:
        faces.model_path("GFPGAN", "gfpgan_visibility")


def postprocessing_text(info: dict) -> str:
    return ", ".join(f"{key}: {quote(format_number(value))}" for key, value in info.items())


def run_extras(request: ExtrasRequest, upscalers: Upscalers, outputs: OutputStore,
               progress: JobProgress, faces: FaceRestorers | None = None) -> GenerationResult:
    found = check_request(request, upscalers, faces)
    progress.batches, progress.steps_per_batch = len(found), 1
    results: list[ImageResult] = []
    for number, source in enumerate(found):
        progress.batch, progress.step = number, 0
        try:
            progress.check_interrupt()  # the built-in resamplers have no tiles to check between
            results.append(_upscale_one(request, source, upscalers, faces, outputs, progress.check_interrupt))
        except BatchSkipped:
            continue
        except JobInterrupted:
            return GenerationResult(images=results, interrupted=True)
        progress.image_saved(results[-1])
        progress.step = 1
        progress.note_step()
    return GenerationResult(images=results)


def _upscale_one(request: ExtrasRequest, source: Source, upscalers: Upscalers, faces: FaceRestorers | None,
                 outputs: OutputStore, check: Callable) -> ImageResult:
    image = source.load()
    parameters = read_infotext(image) or ""  # before any conversion: it lives in the source's metadata
    if not request.upscales and not request.gfpgan_visibility > 0:  # as A1111: the image comes back unchanged
        return _unchanged(request, image, parameters, outputs)
    result, info = _upscaled(request, image, upscalers, check) if request.upscales else (image.convert("RGB"), {})
    if request.gfpgan_visibility > 0:
        result = faces.restore(result, "GFPGAN", request.gfpgan_visibility, "gfpgan_visibility", check)
        info["GFPGAN visibility"] = round(request.gfpgan_visibility, 3)
    text = postprocessing_text(info)
    return _finish(request, result, parameters, text, outputs)


def _upscaled(request: ExtrasRequest, image: Image.Image, upscalers: Upscalers,
              check: Callable) -> tuple[Image.Image, dict]:
    target = target_for(request, image.size)
    info = dict(target.info)
    result = upscalers.upscale(image, request.upscaler_1, target.upscale_to, "upscaler_1", check)
    info["Postprocess upscaler"] = request.upscaler_1
    if request.upscaler_2 != "None" and request.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale(image, request.upscaler_2, target.upscale_to, "upscaler_2", check)
        result = Image.blend(result, second, request.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = request.upscaler_2
    if target.crop is not None:
        result = result.crop(target.crop)
    return result, info


def _finish(request: ExtrasRequest, result: Image.Image, parameters: str, text: str,
            outputs: OutputStore) -> ImageResult:
    chunks = {"postprocessing": text, "extras": text}
    png = encode_png(result, parameters, chunks)
    path = outputs.save_image(result, "extras", parameters or None, extra_text=chunks) if request.save_images else None
    parsed = parse_infotext(parameters) if parameters else {}
    try:
        seed = int(parsed.get("Seed", -1))
    except ValueError:
        seed = -1
    return ImageResult(png=png, path=path and str(path), seed=seed, prompt=parsed.get("Prompt", ""),
                       negative_prompt=parsed.get("Negative prompt", ""), infotext=parameters,
                       postprocessing=text)


def _unchanged(request: ExtrasRequest, image: Image.Image, parameters: str, outputs: OutputStore) -> ImageResult:
    png = encode_png(image, parameters)
    path = outputs.save_image(image, "extras", parameters or None) if request.save_images else None
    parsed = parse_infotext(parameters) if parameters else {}
    seed = parsed.get("Seed", "")
    return ImageResult(png=png, path=path and str(path), seed=int(seed) if seed.isdigit() else -1,
                       prompt=parsed.get("Prompt", ""),
                       negative_prompt=parsed.get("Negative prompt", ""), infotext=parameters, postprocessing="")
