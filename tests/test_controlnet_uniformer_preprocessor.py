"""seg_ufade20k runs when the extension's uniformer/upernet_global_small.pth is in models/ControlNetPreprocessor/: a
tiny mmseg checkpoint is written here in the original layout (the names of annotator/uniformer/uniformer.py's
UniFormer as "backbone", mmseg's UPerHead as "decode_head" and FCNHead as "auxiliary_head", spelled out below),
saved as mmseg saves it ({"state_dict", "meta"}); the maps are checked against a computation written out here with
plain torch functions on those original names."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.controlnet.segmentation_palettes import ADE20K_COLORS
from backend.controlnet.uniformer_network import UniFormerUperNet, mapped_state, network_size, uniformer_network
from backend.controlnet.weighted_runs import NETWORK_RUNS
from backend.core.errors import UserError

RELATIVE = "uniformer/upernet_global_small.pth"
WIDTHS, DEPTHS, CHANNELS, CLASSES = (8, 16, 64, 64), (1, 1, 2, 1), 16, 150  # heads of 64 channels in stages 3-4


def conv_module(name: str, out_channels: int, in_channels: int, kernel: int) -> dict[str, tuple]:
    """mmcv's ConvModule with a batch norm: conv (no bias), bn."""
    return {f"{name}.conv.weight": (out_channels, in_channels, kernel, kernel), f"{name}.bn.weight": (out_channels,),
            f"{name}.bn.bias": (out_channels,), f"{name}.bn.running_mean": (out_channels,),
            f"{name}.bn.running_var": (out_channels,), f"{name}.bn.num_batches_tracked": ()}


def original_shapes(widths=WIDTHS, depths=DEPTHS, channels=CHANNELS, classes=CLASSES, auxiliary=8, mlp_ratio=4):
    """Every tensor of the mmseg EncoderDecoder (UniFormer, UPerHead, FCNHead), by its original name."""
    shapes = {}

    def norm(name, width, batch=False):
        shapes.update({f"{name}.weight": (width,), f"{name}.bias": (width,)})
        if batch:
            shapes.update({f"{name}.running_mean": (width,), f"{name}.running_var": (width,),
                           f"{name}.num_batches_tracked": ()})

    def layer(name, out_channels, in_channels, *kernel):
        shapes.update({f"{name}.weight": (out_channels, in_channels, *kernel), f"{name}.bias": (out_channels,)})

    for stage, width in enumerate(widths):
        number, before = stage + 1, 3 if stage == 0 else widths[stage - 1]
        patch = 4 if stage == 0 else 2
        layer(f"backbone.patch_embed{number}.proj", width, before, patch, patch)
        norm(f"backbone.patch_embed{number}.norm", width)
        for block in range(depths[stage]):
            name, hidden = f"backbone.blocks{number}.{block}", width * mlp_ratio
            layer(f"{name}.pos_embed", width, 1, 3, 3)
            if stage < 2:  # CBlock
                norm(f"{name}.norm1", width, batch=True)
                layer(f"{name}.conv1", width, width, 1, 1)
                layer(f"{name}.attn", width, 1, 5, 5)
                layer(f"{name}.conv2", width, width, 1, 1)
                norm(f"{name}.norm2", width, batch=True)
                layer(f"{name}.mlp.fc1", hidden, width, 1, 1)
                layer(f"{name}.mlp.fc2", width, hidden, 1, 1)
            else:  # SABlock
                norm(f"{name}.norm1", width)
                layer(f"{name}.attn.qkv", 3 * width, width)
                layer(f"{name}.attn.proj", width, width)
                norm(f"{name}.norm2", width)
                layer(f"{name}.mlp.fc1", hidden, width)
                layer(f"{name}.mlp.fc2", width, hidden)
        norm(f"backbone.norm{number}", width)
    for index in range(4):
        shapes.update(conv_module(f"decode_head.psp_modules.{index}.1", channels, widths[-1], 1))
    shapes.update(conv_module("decode_head.bottleneck", channels, widths[-1] + 4 * channels, 3))
    for index, width in enumerate(widths[:-1]):
        shapes.update(conv_module(f"decode_head.lateral_convs.{index}", channels, width, 1))
        shapes.update(conv_module(f"decode_head.fpn_convs.{index}", channels, channels, 3))
    shapes.update(conv_module("decode_head.fpn_bottleneck", channels, 4 * channels, 3))
    layer("decode_head.conv_seg", classes, channels, 1, 1)
    shapes.update(conv_module("auxiliary_head.convs.0", auxiliary, widths[2], 3))
    layer("auxiliary_head.conv_seg", classes, auxiliary, 1, 1)
    return shapes


def tiny_original_state(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors everywhere (norms and biases too, variances positive), so a tensor in the wrong place shows;
    the classifier sharp enough that a map holds several classes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in original_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(5)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "bn.weight")) or ".norm" in name \
                and name.endswith("weight"):
            state[name] = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:
            state[name] = torch.randn(shape, generator=generator) / max(1, np.prod(shape[1:])) ** 0.5
    state["decode_head.conv_seg.weight"] *= 4
    return state


@pytest.fixture(scope="session")
def uniformer_file(tmp_path_factory):
    """The tiny file in the extension's downloads/ layout, with mmseg's meta (classes, palette, config text)."""
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    path = folder / "downloads" / RELATIVE
    path.parent.mkdir(parents=True)
    original = tiny_original_state()
    meta = {"CLASSES": tuple(f"class{index}" for index in range(CLASSES)),
            "PALETTE": [list(colour) for colour in ADE20K_COLORS], "mmcv_version": "1.3.0", "iter": 160000,
            "config": "model = dict(type='EncoderDecoder', ...)"}
    torch.save({"state_dict": original, "meta": meta}, path)
    return folder, original


@pytest.fixture(scope="module")
def catalog(uniformer_file):
    return PreprocessorCatalog(uniformer_file[0])


def picture(height=64, width=64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (90, 160, 230)
    cv2.circle(image, (width // 3, 2 * height // 3), height // 4, (40, 180, 60), thickness=-1)
    cv2.rectangle(image, (width // 2, height // 3), (width - 6, height - 6), (200, 40, 40), thickness=-1)
    return image


def detect(catalog, image, resolution=64):
    preprocessor = catalog.get("seg_ufade20k")
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, None, None))


def reference_scores(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The mmseg EncoderDecoder's decode-head output, written with torch functions on the original names."""

    def conv(name, x, **options):
        return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), **options)

    def layer_norm_channels(name, x, eps):
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], state[f"{name}.weight"], state[f"{name}.bias"],
                            eps).permute(0, 3, 1, 2)

    def batch_norm(name, x):
        return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], eps=1e-5)

    def conv_bn_relu(name, x, padding=0):
        return F.relu(batch_norm(f"{name}.bn", F.conv2d(x, state[f"{name}.conv.weight"], padding=padding)))

    def linear(name, x):
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    features, x = [], pixels
    for number, width in enumerate(WIDTHS, start=1):
        x = conv(f"backbone.patch_embed{number}.proj", x, stride=4 if number == 1 else 2)
        x = layer_norm_channels(f"backbone.patch_embed{number}.norm", x, 1e-5)
        for block in range(DEPTHS[number - 1]):
            name = f"backbone.blocks{number}.{block}"
            x = x + conv(f"{name}.pos_embed", x, padding=1, groups=width)
            if number <= 2:
                local = conv(f"{name}.conv1", batch_norm(f"{name}.norm1", x))
                x = x + conv(f"{name}.conv2", conv(f"{name}.attn", local, padding=2, groups=width))
                x = x + conv(f"{name}.mlp.fc2", F.gelu(conv(f"{name}.mlp.fc1", batch_norm(f"{name}.norm2", x))))
            else:
                batch, _, height, width_ = x.shape
                tokens = x.flatten(2).transpose(1, 2)
                heads = width // 64
                qkv = linear(f"{name}.attn.qkv", F.layer_norm(tokens, (width,), state[f"{name}.norm1.weight"],
                                                               state[f"{name}.norm1.bias"], 1e-6))
                query, key, value = qkv.reshape(batch, -1, 3, heads, 64).permute(2, 0, 3, 1, 4)
                weights = (query @ key.transpose(-2, -1) * 64 ** -0.5).softmax(dim=-1)
                attended = (weights @ value).transpose(1, 2).reshape(batch, -1, width)
                tokens = tokens + linear(f"{name}.attn.proj", attended)
                normed = F.layer_norm(tokens, (width,), state[f"{name}.norm2.weight"], state[f"{name}.norm2.bias"],
                                      1e-6)
                tokens = tokens + linear(f"{name}.mlp.fc2", F.gelu(linear(f"{name}.mlp.fc1", normed)))
                x = tokens.transpose(1, 2).reshape(batch, width, height, width_)
        features.append(layer_norm_channels(f"backbone.norm{number}", x, 1e-6))

    def upsized(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    top = features[-1]
    pooled = [upsized(conv_bn_relu(f"decode_head.psp_modules.{index}.1", F.adaptive_avg_pool2d(top, scale)),
                      top.shape[2:]) for index, scale in enumerate((1, 2, 3, 6))]
    laterals = [conv_bn_relu(f"decode_head.lateral_convs.{index}", features[index]) for index in range(3)]
    laterals.append(conv_bn_relu("decode_head.bottleneck", torch.cat([top, *pooled], dim=1), padding=1))
    for index in range(3, 0, -1):
        laterals[index - 1] = laterals[index - 1] + upsized(laterals[index], laterals[index - 1].shape[2:])
    outputs = [conv_bn_relu(f"decode_head.fpn_convs.{index}", laterals[index], padding=1) for index in range(3)]
    outputs.append(laterals[3])
    outputs = [outputs[0], *(upsized(output, outputs[0].shape[2:]) for output in outputs[1:])]
    return conv("decode_head.conv_seg", conv_bn_relu("decode_head.fpn_bottleneck", torch.cat(outputs, 1), padding=1))


def reference_map(state, image: np.ndarray) -> np.ndarray:
    """mmseg's test pipeline and whole inference on an image already at the resolution (a multiple of 64: no pad):
    keep-ratio rescale into 2048x512 (cv2 bilinear), the channels read as BGR and swapped, normalised; scores to
    the input size, then to the image's; softmax, argmax; mmseg's show_result colouring at opacity 1."""
    height, width = image.shape[:2]
    assert height % 64 == width % 64 == 0
    factor = min(2048 / max(height, width), 512 / min(height, width))
    size = (int(width * factor + 0.5), int(height * factor + 0.5))
    resized = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(np.float32),
                           cv2.COLOR_BGR2RGB)
    normalised = (resized - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    pixels = torch.from_numpy(normalised.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        scores = F.interpolate(reference_scores(state, pixels), size=pixels.shape[2:], mode="bilinear")
        labels = F.interpolate(scores, size=(height, width), mode="bilinear").softmax(1)[0].argmax(0).numpy()
    coloured = np.zeros((height, width, 3), np.uint8)
    for label, colour in enumerate(ADE20K_COLORS):
        coloured[labels == label] = colour
    return coloured


def segmenter(catalog):
    path = catalog.weights_dir / "downloads" / RELATIVE
    return catalog.networks.get((path,), NETWORK_RUNS["segmentation"].build, sized_by_file=True)


def test_the_map_is_the_original_network_coloured_with_the_ade20k_palette(catalog, uniformer_file):
    image = picture()
    detected = detect(catalog, image)
    assert detected.shape == (64, 64, 3) and detected.dtype == np.uint8
    expected = reference_map(uniformer_file[1], image)
    assert np.array_equal(detected, expected)
    colours = {tuple(colour) for colour in detected.reshape(-1, 3)}
    assert colours <= set(ADE20K_COLORS) and len(colours) >= 3


def test_the_network_scores_equal_the_original_computation(catalog, uniformer_file):
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours, reference = segmenter(catalog)(pixels), reference_scores(uniformer_file[1], pixels)
    assert ours.shape == (1, CLASSES, 16, 24)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5), (ours - reference).abs().max()


def test_the_network_holds_the_files_weights(catalog, uniformer_file):
    """Read back through the mapping, every inference tensor equals the one written under the original name."""
    network = segmenter(catalog)
    assert isinstance(network, UniFormerUperNet) and not network.training
    loaded, written = network.state_dict(), uniformer_file[1]
    renamed = {"decode_head.conv_seg.weight": "decode_head.classifier.weight",
               "decode_head.conv_seg.bias": "decode_head.classifier.bias"}
    compared = [key for key in written if not key.startswith("auxiliary_head.")]
    for key in compared:
        ours = renamed.get(key, key.replace(".bn.", ".batch_norm.") if key.startswith("decode_head.") else key)
        assert torch.equal(loaded[ours], written[key]), key
    assert len(compared) == len(loaded) > 150
    assert network_size(written) == {"widths": list(WIDTHS), "depths": list(DEPTHS), "mlp_ratio": 4.0,
                                     "qkv_bias": True, "channels": CHANNELS, "classes": CLASSES}


def test_maps_keep_the_aspect_at_the_requested_resolution(catalog):
    image = cv2.resize(picture(64, 128), (100, 70))
    assert detect(catalog, image).shape == (64, 91, 3)


def test_an_installed_file_makes_it_available_and_a_missing_one_is_named(catalog, tmp_path):
    assert "seg_ufade20k" in catalog.available()
    assert catalog.needed_files()["seg_ufade20k"] == []
    empty = PreprocessorCatalog(tmp_path)
    assert "seg_ufade20k" not in empty.available()
    with pytest.raises(UserError) as refused:
        empty.get("seg_ufade20k", field="controlnet.args[0].module")
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
    assert str(tmp_path / RELATIVE) in refused.value.message


def test_a_foreign_file_is_refused_naming_it(tmp_path, uniformer_file):
    original = dict(uniformer_file[1])
    path = tmp_path / "upernet_global_small.pth"
    with pytest.raises(UserError, match=r"upernet_global_small\.pth does not hold an mmseg UniFormer UPerNet"):
        uniformer_network({"conv.weight": torch.zeros(1)}, "module", path, CLASSES)
    with pytest.raises(UserError, match=r"unknown tensor: backbone\.extra\.weight"):
        uniformer_network({**original, "backbone.extra.weight": torch.zeros(1)}, "module", path, CLASSES)
    with pytest.raises(UserError, match=r"segments 19 classes, not ADE20K's 150"):
        uniformer_network({**original, "decode_head.conv_seg.weight": torch.zeros(19, CHANNELS, 1, 1)}, "module",
                          path, CLASSES)
    original.pop("decode_head.fpn_convs.1.bn.bias")
    with pytest.raises(UserError, match=r"missing tensor: decode_head\.fpn_convs\.1\.batch_norm\.bias"):
        uniformer_network(original, "module", path, CLASSES)


def test_a_file_through_the_catalog_that_is_not_the_network_is_refused(tmp_path):
    path = tmp_path / RELATIVE
    path.parent.mkdir()
    torch.save({"state_dict": {"backbone.conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(UserError) as refused:
        detect(PreprocessorCatalog(tmp_path), picture())
    assert refused.value.status == 422 and str(path) in refused.value.message


def test_the_published_uniformer_s_size_is_read_from_the_file():
    """upernet_global_small: UniFormer-S (widths 64-128-320-512, depths 3-4-8-3), UPerHead of 512 channels, 150
    classes, auxiliary FCNHead of 256; on the meta device, nothing allocated. The paper's 22M parameters for
    UniFormer-S count its ImageNet classifier (512 x 1000 and biases), which segmentation leaves out."""
    shapes = original_shapes((64, 128, 320, 512), (3, 4, 8, 3), 512, 150, auxiliary=256)
    published = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    size = network_size(published)
    assert size == {"widths": [64, 128, 320, 512], "depths": [3, 4, 8, 3], "mlp_ratio": 4.0, "qkv_bias": True,
                    "channels": 512, "classes": 150}
    with torch.device("meta"):
        network = UniFormerUperNet(**size)
    assert {key: value.shape for key, value in mapped_state(published).items()} == \
        {key: value.shape for key, value in network.state_dict().items()}
    backbone = sum(parameter.numel() for parameter in network.backbone.parameters())
    assert round((backbone + 512 * 1000 + 1000) / 1e6) == 22
