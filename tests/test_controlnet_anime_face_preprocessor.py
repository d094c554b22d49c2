"""seg_anime_face runs when anime_face_segment/UNet.pth is installed (the extension's layout): our U-Net filled from
a test checkpoint in the original's layout (MobileNetV2 feature layers under en_block*, decoder convolutions under
de_block*, saved from DataParallel), compared with the extension's computation written out here on the original
names: torchvision's MobileNetV2 layers, plain torch for the decoder, its transforms and palette."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.models import mobilenet_v2

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.core.errors import UserError

# the extension's PALETTE: background, hair, eye, mouth, face, skin, clothes
PALETTE = [(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255), (255, 0, 255)]
# the extension's UNet: en_block0..4 hold MobileNetV2's feature layers 0-1, 2-3, 4-6, 7-13 and 14-16
ENCODER = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9, 10, 11, 12, 13), (14, 15, 16))
# de_block4..0: (input, output) channels of their convolution (layer 1 of each block)
DECODER = {4: (160, 96), 3: (192, 32), 2: (64, 24), 1: (48, 16), 0: (32, 7)}


def original_state(seed: int = 0, classes: int = 7) -> dict[str, torch.Tensor]:
    """A checkpoint as the published UNet.pth is laid out, random weights."""
    torch.manual_seed(seed)
    features = mobilenet_v2(weights=None).features.state_dict()
    state = {}
    for block, layers in enumerate(ENCODER):
        for position, layer in enumerate(layers):
            for key, value in features.items():
                if key.startswith(f"{layer}."):
                    state[f"en_block{block}.{position}.{key.partition('.')[2]}"] = value
    for block, (in_channels, out_channels) in DECODER.items():
        out_channels = classes if block == 0 else out_channels
        scale = (2 / (9 * in_channels)) ** 0.5  # He initialisation: the scores vary over the image
        state[f"de_block{block}.1.weight"] = torch.randn(out_channels, in_channels, 3, 3) * scale
        state[f"de_block{block}.1.bias"] = torch.randn(out_channels) * 0.1
    return state


def original_scores(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The extension's UNet.forward, on the checkpoint's tensors by their names."""
    features = mobilenet_v2(weights=None).features.eval()
    features.load_state_dict({f"{layer}.{key.split('.', 2)[2]}": value for key, value in state.items()
                              if key.startswith("en_block")
                              for block, position in [map(int, key.removeprefix("en_block").split(".")[:2])]
                              for layer in [ENCODER[block][position]]}, strict=False)
    skips, x = [], pixels
    for layers in ENCODER:
        for layer in layers:
            x = features[layer](x)
        skips.append(x)

    def decoded(x, block):
        x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), state[f"de_block{block}.1.weight"],
                     state[f"de_block{block}.1.bias"], padding=1)
        return x.softmax(dim=1) if block == 0 else F.leaky_relu(F.instance_norm(x), 0.1)

    x = skips[4]
    for block, skip in zip((4, 3, 2, 1), skips[3::-1], strict=True):
        x = torch.cat((F.interpolate(decoded(x, block), size=skip.shape[2:], mode="bilinear", align_corners=True),
                       skip), 1)
    return decoded(x, 0)


def extension_labels(state, padded: np.ndarray) -> np.ndarray:
    """AnimeFaceSegment.__call__ on the padded image: Resize(512, bicubic), ToTensor, each pixel's argmax."""
    transform = transforms.Compose([transforms.Resize(512, interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.ToTensor()])
    with torch.no_grad():
        scores = original_scores(state, transform(Image.fromarray(padded))[None])[0].numpy()
    return np.argmax(scores.transpose(1, 2, 0), axis=2)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The checkpoint saved from DataParallel ("module." before every key), as the extension's loader expects."""
    state = original_state()
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    (folder / "anime_face_segment").mkdir()
    torch.save({f"module.{key}": value for key, value in state.items()}, folder / "anime_face_segment" / "UNet.pth")
    return PreprocessorCatalog(folder), state


def face_drawing(height: int, width: int) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([(rows * 255 // height), (columns * 255 // width), np.full_like(rows, 200)], axis=2)
    image[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = (250, 220, 200)
    return image.astype(np.uint8)


def segmented(catalog, image, resolution):
    preprocessor = catalog.get("seg_anime_face", field="controlnet_module")
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, None, None))


def test_seg_anime_face_is_the_extensions_map_at_512(installed):
    """A 512x560 image at resolution 512: edge-padded to 512x576, segmented, the pad taken off."""
    catalog, state = installed
    image = face_drawing(512, 560)
    padded = np.pad(image, [[0, 0], [0, 16], [0, 0]], mode="edge")
    expected = np.array(PALETTE, np.uint8)[extension_labels(state, padded)][:512, :560]
    ours = segmented(catalog, image, 512)
    assert ours.shape == (512, 560, 3) and len(np.unique(ours.reshape(-1, 3), axis=0)) >= 2
    assert np.array_equal(ours, expected)
    assert "seg_anime_face" in catalog.available()


def test_seg_anime_face_covers_the_image_at_other_resolutions(installed):
    """At resolution 64 the 512-side segmentation is scaled back onto the 64x64 image (nearest class); the
    extension keeps its top left 64x64 corner instead."""
    catalog, state = installed
    image = face_drawing(64, 64)
    labels = extension_labels(state, image)
    ours = segmented(catalog, image, 64)
    assert ours.shape == (64, 64, 3)
    assert np.array_equal(ours, np.array(PALETTE, np.uint8)[labels[::8, ::8]])
    assert not np.array_equal(ours, np.array(PALETTE, np.uint8)[labels[:64, :64]])


def test_another_file_is_refused_naming_it(tmp_path):
    (tmp_path / "anime_face_segment").mkdir()
    catalog = PreprocessorCatalog(tmp_path)
    path = tmp_path / "anime_face_segment" / "UNet.pth"
    for state, words in ((original_state(classes=8), "de_block0.1.weight"),
                         ({"conv1.weight": torch.zeros(8, 3, 3, 3)}, "en_block0.0.0.weight")):
        torch.save(state, path)
        catalog.networks.clear()
        with pytest.raises(UserError) as refused:
            segmented(catalog, face_drawing(64, 64), 64)
        assert refused.value.status == 422 and refused.value.field == "controlnet_module"
        assert str(path) in refused.value.message and words in refused.value.message
