"""A1111's seeded noise for one batch: each image's initial noise from its seed, blended towards its variation
seed (spherical interpolation), optionally made at another size and centred ("Seed resize from"), and the
generators the sampler draws its later noise from (reseeded with seed + ENSD when that is set).

Each image has its own generator, so an image's noise never depends on its batch. With randn_source "CPU" the
numbers come from a CPU generator and are moved to the device: the same seed gives the same noise everywhere.
"GPU" draws on the execution device (faster, but its numbers differ between device kinds and vendors). "NV" makes
the seeds' noise as an NVIDIA GPU's torch.randn does, on any device (A1111's NV, backend.generation.philox); the
noise a sampler draws later (ancestral and SDE samplers) then comes from CPU generators.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from backend.generation.philox import nv_randn


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (0) to `high` (1) of one image's noise (C, H, W), normalised along
    dimension 1 as A1111 does; nearly parallel inputs are blended linearly."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - strength) + high * strength
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return ((torch.sin((1.0 - strength) * omega) / sin_omega).unsqueeze(1) * low
            + (torch.sin(strength * omega) / sin_omega).unsqueeze(1) * high)


def centred_into(noise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`noise` (C, h, w) placed at the centre of `target` (C, H, W): cropped where larger, surrounded by `target`'s
    own noise where smaller, so the composition of the smaller size survives the change of size."""
    result = target.clone()
    rows, cols = (_overlap(noise.shape[axis], target.shape[axis]) for axis in (1, 2))
    result[:, rows[1], cols[1]] = noise[:, rows[0], cols[0]]
    return result


def _overlap(source: int, target: int) -> tuple[slice, slice]:
    """(slice of the source, slice of the target) where a centred source and the target overlap."""
    offset = (target - source) // 2
    if offset >= 0:
        return slice(0, source), slice(offset, offset + source)
    return slice(-offset, -offset + target), slice(0, target)


@dataclass(frozen=True)
class NoiseOptions:
    """The request's noise settings (see GenerationRequest)."""
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] | None = None  # (width, height) in pixels, or None
    eta_noise_seed_delta: int = 0
    randn_source: str = "CPU"

    @classmethod
    def from_request(cls, request) -> NoiseOptions:
        resize = (request.seed_resize_from_w, request.seed_resize_from_h)
        return cls(subseed_strength=request.subseed_strength,
                   resize_from=resize if min(resize) > 0 else None,
                   eta_noise_seed_delta=request.eta_noise_seed_delta, randn_source=request.randn_source)

    @property
    def changes_initial_noise(self) -> bool:
        """Whether the initial noise differs from each seed's plain draw."""
        return self.subseed_strength > 0 or self.resize_from is not None


@dataclass
class BatchNoise:
    """The noise of one batch: `seeds[i]` and `subseeds[i]` belong to image i."""
    seeds: list[int]
    subseeds: list[int]
    options: NoiseOptions = field(default_factory=NoiseOptions)

    def __len__(self) -> int:
        return len(self.seeds)

    def _generator(self, seed: int, device: torch.device) -> torch.Generator:
        where = device if self.options.randn_source == "GPU" else "cpu"
        return torch.Generator(where).manual_seed(seed)

    def initial(self, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
                latent_scale: int = 8) -> tuple[torch.Tensor, list[torch.Generator]]:
        """(initial noise (batch, C, H, W) on `device`, the generators the sampler continues with)."""
        options, device = self.options, torch.device(device)
        generators, images = [], []
        resized_shape = None
        if options.resize_from is not None:
            width, height = options.resize_from
            resized_shape = (shape[0], height // latent_scale, width // latent_scale)
        for seed, subseed in zip(self.seeds, self.subseeds):
            generator = self._generator(seed, device)
            if resized_shape is not None:
                noise = self._seed_noise(seed, self._generator(seed, device), resized_shape)
            else:
                noise = self._seed_noise(seed, generator, shape)
            if options.subseed_strength > 0:
                subnoise = self._seed_noise(subseed, self._generator(subseed, device), resized_shape or shape)
                noise = slerp(options.subseed_strength, noise, subnoise)
            if resized_shape is not None:
                noise = centred_into(noise, self._seed_noise(seed, generator, shape))
            images.append(noise)
            generators.append(generator)
        return torch.stack(images).to(device=device, dtype=dtype), self._step_generators(generators, device)

    def sampler_generators(self, device: torch.device) -> list[torch.Generator]:
        """Generators for a pipeline that draws the initial noise itself (img2img): seeded so that its draw is
        each seed's noise and the sampler's later noise follows it, as `initial` leaves them."""
        return self._step_generators([self._generator(seed, torch.device(device)) for seed in self.seeds],
                                     torch.device(device))

    def _step_generators(self, continued: list[torch.Generator], device: torch.device) -> list[torch.Generator]:
        delta = self.options.eta_noise_seed_delta
        if not delta:
            return continued
        return [self._generator(seed + delta, device) for seed in self.seeds]

    def _seed_noise(self, seed: int, generator: torch.Generator, shape) -> torch.Tensor:
        """A seed's first draw of `shape`, from `generator` (fresh, seeded with `seed`) or, for NV, from Philox."""
        if self.options.randn_source == "NV":
            return nv_randn(seed, shape).to(generator.device)
        return self._draw(generator, shape)

    @staticmethod
    def _draw(generator: torch.Generator, shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    @contextmanager
    def replacing_pipeline_noise(self, pipeline, latent_scale: int) -> Iterator[None]:
        """Within the block, the noise an img2img/inpaint pipeline adds to the image latents is this batch's
        (variation, resize) instead of its own draw. Always, not only with a variation: a pipeline that samples
        the VAE's latents draws from the seed's generator first, so its own noise would be another draw than the
        txt2img noise of the same seed. `pipeline.scheduler` is the job's own, never the cache's."""
        scheduler = pipeline.scheduler
        original = scheduler.add_noise
        made: dict[tuple, torch.Tensor] = {}

        def add_noise(samples: torch.Tensor, noise: torch.Tensor, timesteps):
            key = tuple(noise.shape)
            if key not in made:
                made[key] = self.initial(tuple(noise.shape[1:]), noise.device, noise.dtype, latent_scale)[0]
            return original(samples, made[key], timesteps)

        scheduler.add_noise = add_noise
        try:
            yield
        finally:
            del scheduler.add_noise

    def first_pass_arguments(self, pipeline, width: int, height: int) -> dict:
        """`latents` and `generator` for a txt2img pipeline call at width x height."""
        scale = pipeline.vae_scale_factor
        shape = (pipeline.vae.config.latent_channels, height // scale, width // scale)
        latents, generators = self.initial(shape, pipeline._execution_device, pipeline.unet.dtype, scale)
        return {"latents": latents, "generator": generators}
