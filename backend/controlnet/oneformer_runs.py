"""seg_ofade20k and seg_ofcoco as sd-webui-controlnet makes them (annotator/oneformer, run through its detectron2
predictor): the image scaled to the preprocessor resolution and edge-padded, then scaled again to the dataset's test
size, normalised, run with the task "the task is semantic", each pixel's class coloured with the dataset's palette,
the pad taken off."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.controlnet.oneformer_network import load_oneformer
from backend.controlnet.preprocessors import scaled_and_padded
from backend.controlnet.segmentation_palettes import ADE20K_COLORS, COCO_PANOPTIC_COLORS

PIXEL_MEAN, PIXEL_STD = (123.675, 116.280, 103.530), (58.395, 57.120, 57.375)  # on 0-255 RGB, the configs' values
SIZE_DIVISIBILITY = 32  # the model pads its input to multiples of this (ONE_FORMER.SIZE_DIVISIBILITY)
# the tokens the original makes of "The task is semantic" (CLIP's BPE lower-cases), zero-padded to TASK_SEQ_LEN
TASK = "The task is semantic"
UNDRAWN = (255, 255, 255)  # the extension's canvas, where a class has no colour


class OneFormerSegmenter(torch.nn.Module):
    """The network with its task tokens, built once with it."""

    def __init__(self, network: torch.nn.Module, task_inputs: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("task_inputs", task_inputs)


def task_tokens(length: int) -> torch.Tensor:
    from backend.models.tokenizer import build_clip_tokenizer

    ids = build_clip_tokenizer()(TASK, truncation=True, max_length=length)["input_ids"]
    return torch.tensor(ids + [0] * (length - len(ids)), dtype=torch.long)


def load_segmenter(paths: tuple[Path, ...], field: str) -> OneFormerSegmenter:
    network = load_oneformer(paths[0], field)
    return OneFormerSegmenter(network, task_tokens(network.config.task_seq_len))


def shortest_edge_size(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge: the short side to `short`, the long side at most `longest`."""
    scale = short / min(height, width)
    new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
    if max(new_height, new_width) > longest:
        scale = longest / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def model_input(image: np.ndarray, short: int, longest: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The normalised image at the test size, zero-padded (after normalising) to the model's divisibility."""
    height, width = shortest_edge_size(*image.shape[:2], short, longest)
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    pixels = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)
    pixels = (pixels - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    padded = torch.nn.functional.pad(pixels, (0, -width % SIZE_DIVISIBILITY, 0, -height % SIZE_DIVISIBILITY))
    return padded[None], (height, width)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded_size: tuple[int, int],
                    image_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Per class and pixel of the output size: the masks scaled to the padded input, cropped to the image, scaled
    to the output size (detectron2's sem_seg_postprocess, done before inference as the panoptic configs do), then
    summed over the queries weighted by their class probabilities ("no object" left out)."""
    interpolate = torch.nn.functional.interpolate
    masks = interpolate(mask_logits, size=padded_size, mode="bilinear", align_corners=False)
    masks = interpolate(masks[..., : image_size[0], : image_size[1]], size=output_size, mode="bilinear",
                        align_corners=False)
    classes = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())


def semantic_labels(segmenter: OneFormerSegmenter, image: np.ndarray, short: int, longest: int) -> np.ndarray:
    pixels, image_size = model_input(image, short, longest)
    with torch.inference_mode():
        outputs = segmenter.network(pixel_values=pixels, task_inputs=segmenter.task_inputs[None])
        scores = semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits,
                                 tuple(pixels.shape[-2:]), image_size, image.shape[:2])
    return scores[0].argmax(dim=0).numpy()


def coloured(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    colours = np.array([*palette, UNDRAWN], np.uint8)
    return colours[np.minimum(labels, len(palette))]


@dataclass(frozen=True)
class OneFormerRun:
    """One dataset's segmentation: its test size (INPUT.MIN/MAX_SIZE_TEST) and palette."""

    short: int
    longest: int
    palette: tuple[tuple[int, int, int], ...]

    def __call__(self, segmenter, image, resolution, *_thresholds) -> np.ndarray:
        padded, height, width = scaled_and_padded(image, resolution)
        labels = semantic_labels(segmenter, padded, self.short, self.longest)
        return coloured(labels, self.palette)[:height, :width].copy()


ADE20K_RUN = OneFormerRun(512, 2048, ADE20K_COLORS)
COCO_RUN = OneFormerRun(640, 2560, COCO_PANOPTIC_COLORS)
