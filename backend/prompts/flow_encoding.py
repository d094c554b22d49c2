"""Prompt conditioning for the flow-matching models, as Forge does it: A1111's syntax (weights, BREAK, embeddings,
scheduling and alternation) on the CLIP encoders; T5 gets the plain prompt, the same words without the syntax.

- Flux: the transformer reads T5's sequence; CLIP-L gives only the pooled vector.
- SD3/SD3.5: CLIP-L and CLIP-G's penultimate layers side by side (padded to T5's width), then T5's sequence;
  the pooled vector is both CLIP encoders' projections together.
Padding and truncation of T5 follow diffusers' pipelines, so a plain prompt gives the pixels plain diffusers gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from backend.prompts.encoding import CHUNK_LENGTH, PromptEncoder

T5_LENGTH = {"flux": 512, "sd3": 256}  # diffusers' pipelines' default max_sequence_length


@dataclass(frozen=True)
class FlowEncodedPrompt:
    clip: torch.Tensor | None  # SD3: (1, 77 * chunks, CLIP-L + CLIP-G width); Flux: None (only pooled is used)
    t5: torch.Tensor  # (1, tokens, T5 width)
    pooled: torch.Tensor

    @property
    def chunks(self) -> int:
        return 1 if self.clip is None else self.clip.shape[1] // (CHUNK_LENGTH + 2)

    @property
    def embeds(self) -> torch.Tensor:
        """The sequence the transformer reads."""
        if self.clip is None:
            return self.t5
        clip = torch.nn.functional.pad(self.clip, (0, self.t5.shape[-1] - self.clip.shape[-1]))
        return torch.cat([clip.to(self.t5.dtype), self.t5], dim=1)

    def padded(self, chunks: int, empty: FlowEncodedPrompt | None) -> FlowEncodedPrompt:
        missing = chunks - self.chunks
        if missing <= 0 or self.clip is None:
            return self
        return FlowEncodedPrompt(torch.cat([self.clip, empty.clip.repeat(1, missing, 1)], dim=1), self.t5, self.pooled)


def t5_tokenizer(pipeline, family: str):
    """The T5 tokenizer of a Flux or SD3 pipeline."""
    return pipeline.tokenizer_3 if family == "sd3" else pipeline.tokenizer_2


def plain_text(runs: list[tuple[str, float]]) -> str:
    """The prompt's words without A1111's syntax: brackets and weights gone, BREAK left out."""
    return "".join(" " if (text == "BREAK" and weight == -1) else text for text, weight in runs).strip()


class FlowPromptEncoder:
    """The PromptEncoder interface (encode, tokenize, embeddings ...) for Flux and SD3 pipelines."""

    sdxl = False  # no SDXL added-conditioning tensors to move along a schedule
    pooled = True  # the pipelines take pooled_prompt_embeds

    def __init__(self, pipeline, family: str, clip_skip: int = 1, embeddings=(), parsed: dict | None = None):
        sd3 = family == "sd3"
        clip_view = SimpleNamespace(
            tokenizer=pipeline.tokenizer, text_encoder=pipeline.text_encoder,
            tokenizer_2=pipeline.tokenizer_2 if sd3 else None, text_encoder_2=pipeline.text_encoder_2 if sd3 else None)
        # SD3 reads the penultimate CLIP layers as SDXL does; SDXL embeddings (CLIP-L + CLIP-G vectors) fit it
        self.clip = PromptEncoder(clip_view, "sdxl" if sd3 else "sd1", clip_skip, embeddings, parsed,
                                  pool_every_encoder=True)
        self.t5 = pipeline.text_encoder_3 if sd3 else pipeline.text_encoder_2
        self.t5_tokenizer = t5_tokenizer(pipeline, family)
        self.sd3 = sd3
        self.separate_negative = not sd3  # Flux's true CFG runs the negative prompt in a pass of its own
        self.max_length = T5_LENGTH[family]

    @property
    def chunker(self):
        return self.clip.chunker

    @property
    def embeddings(self):
        return self.clip.embeddings

    @property
    def used_embeddings(self):
        return self.clip.used_embeddings

    @property
    def slots(self):
        return self.clip.slots

    def tokenize(self, text: str) -> list[int]:
        return self.clip.tokenize(text)

    def clip_skip_usable(self) -> int:
        return self.clip.clip_skip_usable()

    @torch.no_grad()
    def encode_t5(self, text: str) -> torch.Tensor:
        ids = self.t5_tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt").input_ids
        return self.t5(ids.to(self.t5.device), output_hidden_states=False)[0]

    def encode(self, text: str) -> FlowEncodedPrompt:
        clip = self.clip.encode(text)
        t5 = self.encode_t5(plain_text(self.clip.chunker.weighted(text)))
        return FlowEncodedPrompt(clip.embeds if self.sd3 else None, t5, clip.pooled.to(t5.dtype))
