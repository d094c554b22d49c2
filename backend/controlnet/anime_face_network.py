"""The anime face segmentation U-Net seg_anime_face reads (anime_face_segment/UNet.pth, sd-webui-controlnet's
annotator/anime_face_segment): torchvision's MobileNetV2 features as the encoder, cut into five blocks after the
layers that halve the size, and a decoder of five upsampling blocks, each joined to the encoder block of its size;
seven classes, softmax scores. Built with the original's module names, so the published file fills it as it is
(torchvision builds the encoder empty: nothing is fetched)."""
from __future__ import annotations

import torch
from torch import nn

CLASSES = 7  # background, hair, eye, mouth, face, skin, clothes
# the MobileNetV2 feature layers of each encoder block: they end at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input
ENCODER_LAYERS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 17))
# each decoder block's input and output channels (after the first, its input is joined to an encoder block's output)
DECODER_CHANNELS = ((160, 96), (96 * 2, 32), (32 * 2, 24), (24 * 2, 16))


def upsampling_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Twice the size, a 3x3 convolution, instance norm, leaky ReLU (and the training's dropout, inert here)."""
    return nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.InstanceNorm2d(out_channels), nn.LeakyReLU(0.1), nn.Dropout(p=0.2))


class AnimeFaceUNet(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v2

        features = mobilenet_v2(weights=None).features
        for index, (start, end) in enumerate(ENCODER_LAYERS):
            setattr(self, f"en_block{index}", nn.Sequential(*features[start:end]))
        for index, (in_channels, out_channels) in zip((4, 3, 2, 1), DECODER_CHANNELS, strict=True):
            setattr(self, f"de_block{index}", upsampling_block(in_channels, out_channels))
        self.de_block0 = nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), nn.Conv2d(16 * 2, CLASSES, 3, padding=1),
                                       nn.Softmax2d())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (N, 3, H, W) -> class scores (N, 7, H, W)."""
        skips = []
        x = pixels
        for index in range(len(ENCODER_LAYERS)):
            x = getattr(self, f"en_block{index}")(x)
            skips.append(x)
        x = skips.pop()
        for index in (4, 3, 2, 1):
            skip = skips.pop()
            # a size that does not halve evenly comes back one off: scaled to the skip's size, as the original
            x = nn.functional.interpolate(getattr(self, f"de_block{index}")(x), size=skip.shape[-2:],
                                          mode="bilinear", align_corners=True)
            x = torch.cat((x, skip), dim=1)
        return self.de_block0(x)


def anime_face_network() -> AnimeFaceUNet:
    return AnimeFaceUNet()
