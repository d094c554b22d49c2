"""A1111's "NV" noise source: the normal numbers torch.randn draws on an NVIDIA GPU for a seed, made on the CPU.

torch's CUDA generator is cuRAND's Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011): element i of a draw is the first Box-Muller output of the Philox block whose counter holds the draw's
offset (words 0-1) and i (words 2-3), keyed with the 64-bit seed. A1111 computes the same in numpy so that a CPU
(or another vendor's GPU) reproduces images made on NVIDIA cards; this module follows its conventions (offset 0
for a fresh generator, one offset per draw, Box-Muller in double precision from cuRAND's float32 constants), so
the same seed gives A1111's NV noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Philox4x32's round multipliers and Weyl key increments (the published constants)
MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
KEY_INCREMENTS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
ROUNDS = 10
LOW_WORD = np.uint64(0xFFFFFFFF)
# cuRAND's float32 scale of a 32-bit integer to (0, 1], and the same times 2 pi, read back as doubles
TWO_POW_32_INV = float(np.float32(2.3283064e-10))
TWO_POW_32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32 of `counter` (4, N) uint32 words under `key` (2, N) uint32 words: (4, N) random words."""
    counter, key = counter.astype(np.uint32, copy=True), key.astype(np.uint32, copy=True)
    with np.errstate(over="ignore"):  # the key schedule adds modulo 2**32
        for round_index in range(rounds):
            if round_index:
                key[0] += KEY_INCREMENTS[0]
                key[1] += KEY_INCREMENTS[1]
            product0 = counter[0].astype(np.uint64) * MULTIPLIERS[0]
            product1 = counter[2].astype(np.uint64) * MULTIPLIERS[1]
            counter = np.stack([
                (product1 >> np.uint64(32)).astype(np.uint32) ^ counter[1] ^ key[0],
                (product1 & LOW_WORD).astype(np.uint32),
                (product0 >> np.uint64(32)).astype(np.uint32) ^ counter[3] ^ key[1],
                (product0 & LOW_WORD).astype(np.uint32),
            ])
    return counter


def box_muller_first(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The first normal number of cuRAND's Box-Muller pair of two uint32 words (u never 0: it is offset by half
    a step)."""
    uniform = first.astype(np.float64) * TWO_POW_32_INV + TWO_POW_32_INV / 2
    angle = second.astype(np.float64) * TWO_POW_32_INV_2PI + TWO_POW_32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(uniform)) * np.sin(angle)).astype(np.float32)


class PhiloxGenerator:
    """Normal noise as torch.randn(..., device="cuda") draws it after torch.cuda.manual_seed(seed)."""

    def __init__(self, seed: int):
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be between 0 and 2**64 - 1; got {seed}")
        self.seed = seed
        self.offset = 0  # draws made so far: each draw uses the next counter offset

    def randn(self, shape) -> torch.Tensor:
        count = math.prod(shape)
        index = np.arange(count, dtype=np.uint64)
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0], counter[1] = self.offset & 0xFFFFFFFF, self.offset >> 32
        counter[2], counter[3] = (index & LOW_WORD).astype(np.uint32), (index >> np.uint64(32)).astype(np.uint32)
        key = np.empty((2, count), dtype=np.uint32)
        key[0], key[1] = self.seed & 0xFFFFFFFF, self.seed >> 32
        self.offset += 1
        words = philox4x32(counter, key)
        return torch.from_numpy(box_muller_first(words[0], words[1]).reshape(tuple(shape)))


def nv_randn(seed: int, shape) -> torch.Tensor:
    """The first draw of a fresh NV generator for `seed` (float32, on the CPU)."""
    return PhiloxGenerator(seed).randn(shape)
