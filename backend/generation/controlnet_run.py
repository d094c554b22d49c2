"""A job's ControlNet units: each unit's control map (preprocessed, fitted to the job's size), its model leased for
the job, the diffusers ControlNet pipeline the job's pipelines become, and what the job reports (infotext per unit
in sd-webui-controlnet's format, the detected maps).

Control modes as the extension implements them: "My prompt is more important" scales the residuals by
0.825^(12-i) (soft injection, deepest layers strongest); "ControlNet is more important" does that and applies
the control to the conditional half of the batch only (cfg injection), so the prompt's guidance works against it.
"""
from __future__ import annotations

import io
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from backend.controlnet.control_map import fit_map, pixel_perfect_resolution
from backend.controlnet.ip_adapter_files import (
    build_image_encoder,
    find_image_encoder,
    is_ip_adapter_module,
    is_ip_adapter_name,
    read_ip_adapter,
)
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.controlnet.service import ControlNets
from backend.core.control_modes import ControlMode, HiresOption
from backend.core.controlnet_units import ControlNetUnit, unit_infotext
from backend.core.hires_sizes import hires_sizes
from backend.core.model_family import FLOW_FAMILIES
from backend.core.requests import GenerationRequest, RequestError
from backend.generation.controlnet_unet import SteeringUnit, steered_pipeline, unit_view
from backend.generation.ip_adapter_run import AdaptedPipeline, PreparedAdapter, check_fits, encode_reference, installed

SOFT_BASE = 0.825  # the extension's soft-injection factor per layer


@dataclass
class PreparedUnit:
    index: int  # the unit's place in the request ("ControlNet <index>" in the infotext)
    unit: ControlNetUnit
    control: torch.Tensor  # (1, 3, H, W) in [0, 1]; inpaint units: -1 where the mask says repaint
    detected: np.ndarray  # the fitted map, shown to the user
    infotext: str
    model: torch.nn.Module
    hires_control: torch.Tensor | None = None  # the map at the hires fix's size (txt2img with the hires fix)
    hires_detected: np.ndarray | None = None

    def applies(self, second_pass: bool) -> bool:
        """A1111's hr_option: which passes of the hires fix the unit steers (a job without it has one pass)."""
        wanted = HiresOption.HIGH_RES_ONLY if second_pass else HiresOption.LOW_RES_ONLY
        return self.unit.hr_option in (HiresOption.BOTH, wanted)


def decode(png: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert(mode), dtype=np.uint8)


def control_tensor(fitted: np.ndarray) -> torch.Tensor:
    """The map as the ControlNet reads it; for inpaint maps (RGBA) the repainted area is -1 (the extension's
    inpaint protocol)."""
    pixels = torch.from_numpy(fitted.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    if pixels.shape[1] == 4:
        colour, repaint = pixels[:, :3], (pixels[:, 3:4] > 0.5).float()
        pixels = colour * (1 - repaint) - repaint
    return pixels


def soft_scales(count: int) -> list[float]:
    return [SOFT_BASE ** float(12 - index) for index in range(count)]


def mode_hook(mode: ControlMode, images_per_batch: int):
    """A forward hook on a ControlNetModel applying the unit's control mode to its residuals."""
    def hook(_module, args, kwargs, output):
        down, mid = output
        residuals = [*down, mid]
        sample = args[0] if args else kwargs["sample"]
        scales = soft_scales(len(residuals))
        residuals = [residual * scale for residual, scale in zip(residuals, scales, strict=True)]
        if mode == ControlMode.CONTROLNET_MORE_IMPORTANT and sample.shape[0] == 2 * images_per_batch:
            # the unconditional half (diffusers puts it first) gets no control
            keep = torch.cat([torch.zeros(images_per_batch), torch.ones(images_per_batch)]).to(sample)
            residuals = [residual * keep.view(-1, 1, 1, 1) for residual in residuals]
        return residuals[:-1], residuals[-1]
    return hook


@dataclass
class JobControls:
    """What the generator needs of a job's units; empty when the request has none (nothing changes then)."""
    units: list[PreparedUnit] = field(default_factory=list)
    adapters: list[PreparedAdapter] = field(default_factory=list)  # IP-Adapter units, installed on the UNet
    adapter_processors: list = field(default_factory=list)
    images_per_batch: int = 1
    _pipelines: dict = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.units or self.adapters)

    def active(self, second_pass: bool = False) -> list[PreparedUnit]:
        """The units that steer this pass: weight 0, or a start at the end (no step controlled), leaves the job
        exactly as without the unit."""
        return [prepared for prepared in self.units if prepared.applies(second_pass) and prepared.unit.weight > 0
                and prepared.unit.guidance_start < prepared.unit.guidance_end]

    @property
    def infotext(self) -> dict[str, str]:
        prepared = sorted([*self.units, *self.adapters], key=lambda unit: unit.index)
        return {f"ControlNet {unit.index}": unit.infotext for unit in prepared}

    def detected_maps(self) -> list[bytes]:
        """Each unit's map (with the hires fix: its hires map first, then the first pass's, as the extension)."""
        maps = []
        for prepared in self.units:
            if prepared.unit.save_detected_map:
                for shown in (prepared.hires_detected, prepared.detected):
                    if shown is not None:
                        buffer = io.BytesIO()
                        Image.fromarray(shown).save(buffer, format="PNG")
                        maps.append(buffer.getvalue())
        return maps

    def wrap(self, pipeline, second_pass: bool = False):
        """`pipeline` itself when no unit steers this pass; else a pipeline sharing its modules whose UNet runs the
        units at each step they steer. `second_pass`: the hires fix's second pass. IP-Adapter units, once
        installed, are given to every call of the job (a pass they do not steer gets weight 0)."""
        active = self.active(second_pass)
        if active:
            key = (id(pipeline), second_pass)
            if key not in self._pipelines:
                steering = [SteeringUnit(prepared.model, prepared.hires_control if second_pass else prepared.control,
                                         prepared.unit.weight, prepared.unit.guidance_start,
                                         prepared.unit.guidance_end) for prepared in active]
                self._pipelines[key] = steered_pipeline(pipeline, steering, self.images_per_batch)
            pipeline = self._pipelines[key]
        if self.adapters:
            pipeline = AdaptedPipeline(pipeline, self.adapters, self.adapter_processors, second_pass)
        return pipeline


def check_supported(request: GenerationRequest, family: str):
    if family in FLOW_FAMILIES or family == "sdxl-refiner":
        raise RequestError("controlnet_units", f"ControlNet with {family} checkpoints is not supported yet; use an "
                                               "SD1.x, SD2.x or SDXL checkpoint")
    if request.refiner_checkpoint and any(is_ip_adapter_module(unit.module) or is_ip_adapter_name(unit.model)
                                          for unit in request.controlnet_units):
        raise RequestError("controlnet_units", "IP-Adapter units together with a refiner are not supported yet "
                                               "(ControlNet units are: they steer the base model's steps)")


def img2img_mask(request: GenerationRequest) -> np.ndarray | None:
    """The img2img inpainting mask as the user painted it (white = repaint, after "Inpaint not masked"), at the
    input image's size: what an inpaint unit without a mask of its own follows (the extension's behaviour)."""
    png = getattr(request, "mask", None)
    if png is None:
        return None
    mask = decode(png, "L")
    return 255 - mask if getattr(request, "inpainting_mask_invert", 0) else mask


def cropped(control: torch.Tensor, crop: tuple[int, int, int, int] | None, width: int, height: int) -> torch.Tensor:
    """The map of the crop that "Inpaint area: Only masked" repaints, at the job's size (as the image is)."""
    if crop is None:
        return control
    left, top, right, bottom = crop
    region = control[:, :, top:bottom, left:right]
    return torch.nn.functional.interpolate(region, size=(height, width))


@contextmanager
def prepared_controls(request: GenerationRequest, controlnets: ControlNets | None, model, checkpoint_title: str,
                      init_image: bytes | None = None, crop: tuple[int, int, int, int] | None = None):
    """The job's units made ready (maps detected and fitted, models leased and on the UNet's device) for the whole
    job; the models go back to the CPU afterwards. `crop`: the region an "only masked" inpainting repaints."""
    if not request.controlnet_units:
        yield JobControls()
        return
    if controlnets is None:
        raise RequestError("controlnet_units", "this server was built without ControlNet")
    check_supported(request, model.family)
    unet = model.pipeline.unet
    with ExitStack() as stack:
        prepared, adapters = [], []
        for index, unit in enumerate(request.controlnet_units):
            field_name = f"controlnet_units.{index}"
            png = unit.image or init_image
            if png is None:
                raise RequestError(f"{field_name}.image", "give the unit an image (txt2img has no input image to use)")
            image = decode(png, "RGB")
            if is_ip_adapter_module(unit.module) or is_ip_adapter_name(unit.model):
                if unit.weight > 0 and unit.guidance_start < unit.guidance_end:  # else: as without the unit
                    adapters.append(prepare_adapter(controlnets, unit, index, image, model, checkpoint_title,
                                                    field_name))
                continue
            preprocessor = controlnets.preprocessors.get(unit.module, f"{field_name}.module")
            mask = decode(unit.mask, "L") if unit.mask else img2img_mask(request) if preprocessor.accepts_mask else None
            processor_res = unit.processor_res
            if unit.pixel_perfect:
                processor_res = pixel_perfect_resolution(image.shape[0], image.shape[1], request.height,
                                                         request.width, unit.resize_mode)
            parameters = resolve_parameters(preprocessor, processor_res, unit.threshold_a, unit.threshold_b)
            detected = run_preprocessor(preprocessor, image, parameters, mask=mask, seed=request.seed)
            fitted = fit_map(detected, unit.resize_mode, request.width, request.height)
            hires = None
            if getattr(request, "enable_hr", False):  # the second pass works at the upscaled size
                hires = fit_map(detected, unit.resize_mode, *hires_sizes(
                    request.width, request.height, request.hr_scale, request.hr_resize_x,
                    request.hr_resize_y).upscaled)
            if unit.model in ("", "None"):
                raise RequestError(f"{field_name}.model", "choose a ControlNet model for the unit")
            entry, controlnet = stack.enter_context(controlnets.cache.lease(
                unit.model, dict(unet.config), model.family, checkpoint_title, unet.dtype, f"{field_name}.model"))
            controlnet.to(unet.device)
            stack.callback(controlnet.to, "cpu")
            if hasattr(controlnet, "total_downscale_factor") and unit.control_mode != ControlMode.BALANCED:
                raise RequestError(f"{field_name}.control_mode", f"'{entry.title}' is a T2I-Adapter; adapters take "
                                                                 "the Balanced control mode only")
            if unit.control_mode != ControlMode.BALANCED:
                controlnet = unit_view(controlnet)  # its hook must not reach another unit of the same model
                controlnet.register_forward_hook(mode_hook(unit.control_mode, request.batch_size), with_kwargs=True)
            infotext = unit_infotext(preprocessor.public_name, entry.title, unit, parameters.resolution,
                                     parameters.threshold_a, parameters.threshold_b)
            slot = unit.slot if unit.slot is not None else index
            control = cropped(control_tensor(fitted), crop, request.width, request.height)
            prepared.append(PreparedUnit(slot, unit, control, fitted[:, :, :3], infotext, controlnet,
                                         None if hires is None else control_tensor(hires),
                                         None if hires is None else hires[:, :, :3]))
        processors = stack.enter_context(installed(unet, adapters))
        yield JobControls(prepared, adapters, processors, request.batch_size)


def prepare_adapter(controlnets: ControlNets, unit: ControlNetUnit, index: int, image: np.ndarray, model,
                    checkpoint_title: str, field_name: str) -> PreparedAdapter:
    """An IP-Adapter unit read, checked against the checkpoint and its reference image encoded (the image encoder
    is kept in the ControlNet cache, leased while it encodes)."""
    module_field, model_field = f"{field_name}.module", f"{field_name}.model"
    if not is_ip_adapter_module(unit.module):
        raise RequestError(module_field, f"the IP-Adapter model '{unit.model}' needs an ip-adapter_* preprocessor "
                                         f"(e.g. ip-adapter_clip_sd15); got '{unit.module}'")
    controlnets.preprocessors.get(unit.module, module_field)  # an unknown ip-adapter name lists the known ones
    if unit.model in ("", "None"):
        raise RequestError(model_field, "choose an IP-Adapter model for the unit")
    entry = controlnets.folder.find(unit.model, model_field)
    if not is_ip_adapter_name(entry.name):
        raise RequestError(model_field, f"'{entry.title}' is not an IP-Adapter model; the preprocessor "
                                        f"'{unit.module}' needs one (ip-adapter_*)")
    weights = read_ip_adapter(entry, model_field)
    unet = model.pipeline.unet
    check_fits(weights, entry.title, unet, checkpoint_title, model.family, model_field)
    found = find_image_encoder(controlnets.clip_vision_dir, weights, unit.module, module_field)
    stat = found.path.stat()  # a file replaced under the same name is built again
    key = ("clip_vision", str(found.path), stat.st_size, stat.st_mtime_ns, str(unet.dtype))
    with controlnets.cache.lease_built(key, lambda: build_image_encoder(found, unet.dtype),
                                       f"image encoder {found.path.name}") as encoder:
        encoder.to(unet.device)
        try:
            embeds, negative = encode_reference(encoder, image, weights.plus)
        finally:
            encoder.to("cpu")  # only the job's own models stay on the device
    parameters = resolve_parameters(controlnets.preprocessors.get(unit.module, module_field), None, None, None)
    infotext = unit_infotext(unit.module, entry.title, unit, parameters.resolution, parameters.threshold_a,
                             parameters.threshold_b)
    return PreparedAdapter(unit.slot if unit.slot is not None else index, unit, weights, embeds, negative, infotext)
