"""Outpainting mk2's fill for the new area (A1111's get_matched_noise, from g-diffuser): noise whose spectrum is
shaped by the known image's spectrum (so its grain and structure resemble the picture) and whose colour histogram
is matched to the known pixels. The noise generator has a fixed seed, as A1111's: the fill depends only on the
image, the mask and the two options."""
from __future__ import annotations

import numpy as np

AXES = (0, 1)


def _fft(data: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D FFT of each channel, centred before and after (as A1111's helper)."""
    return np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data, axes=AXES), axes=AXES, norm="ortho"), axes=AXES)


def _ifft(data: np.ndarray) -> np.ndarray:
    return np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data, axes=AXES), axes=AXES, norm="ortho"), axes=AXES)


def _falloff_window(height: int, width: int) -> np.ndarray:
    """A1111's mode-1 window: 1 / ((x^2 + 1)(y^2 + 1)) over coordinates in [-1, 1) scaled to the aspect ratio."""
    shorter = min(width, height)
    x = (np.arange(width) / width * 2 - 1) * (width / shorter)
    y = (np.arange(height) / height * 2 - 1) * (height / shorter)
    return 1 / ((y[:, None] ** 2 + 1) * (x[None, :] ** 2 + 1))


def match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each channel (column) of `values` mapped so its distribution is `reference`'s (quantile mapping)."""
    matched = np.empty_like(values)
    for channel in range(values.shape[1]):
        source_values, inverse, counts = np.unique(values[:, channel], return_inverse=True, return_counts=True)
        reference_values, reference_counts = np.unique(reference[:, channel], return_counts=True)
        source_quantiles = np.cumsum(counts) / values.shape[0]
        reference_quantiles = np.cumsum(reference_counts) / reference.shape[0]
        matched[:, channel] = np.interp(source_quantiles, reference_quantiles, reference_values)[inverse]
    return matched


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0, color_variation: float = 0.05
                  ) -> np.ndarray:
    """`image`: H x W x 3 in [0, 1]; `mask`: H x W in [0, 1], 1 where the noise goes. Returns the image with the
    masked area filled, in [0, 1]."""
    mask3 = np.repeat(mask[..., None], image.shape[2], axis=2)
    known = mask < 1e-3
    if not known.any():
        raise ValueError("the mask covers the whole image: there are no pixels to match")
    windowed = image * (1 - mask3)
    windowed = windowed / max(float(windowed.max()), 1e-6)
    windowed += image.mean() * mask3  # the unknown area at the average colour, not black: a calmer spectrum
    source_spectrum = _fft(windowed)
    magnitude = np.abs(source_spectrum)
    phase = source_spectrum / np.where(magnitude == 0, 1, magnitude)

    rng = np.random.default_rng(0)
    noise = rng.random(image.shape)
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * color_variation + (1 - color_variation) * grey  # colourfulness of the starting noise
    noise = np.real(_ifft(_fft(noise) * _falloff_window(*image.shape[:2])[..., None]))
    shaped = np.real(_ifft(np.abs(_fft(noise)) ** 2 * magnitude ** noise_q * phase))
    shaped -= shaped.min()
    shaped /= max(float(shaped.max()), 1e-12)
    filled = mask > 1e-6
    shaped[filled] = match_histogram(shaped[filled], image[known])
    return np.clip(image * (1 - mask3) + shaped * mask3, 0, 1)
