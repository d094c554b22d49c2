"""Scheduled prompt conditioning for one sampling pass: `[from:to:when]` and `[a|b]` give each step its own
prompt; every distinct prompt text is encoded once, and the pipeline's step callback swaps the embeddings
in when the schedule moves on (diffusers reads `prompt_embeds` / `add_text_embeds` back from it)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.prompts.encoding import EncodedPrompt, PromptEncoder, pad_to_chunks
from backend.prompts.parser import prompt_schedule


@dataclass(frozen=True)
class ScheduledPrompt:
    """(last step, conditioning) pairs: entry i applies to 0-based steps up to and including its last step."""
    entries: tuple[tuple[int, EncodedPrompt], ...]

    def at(self, step: int) -> EncodedPrompt:
        for last_step, encoded in self.entries:
            if step <= last_step:
                return encoded
        return self.entries[-1][1]


class PassConditioning:
    """Prompt and negative prompt of one sampling pass of `steps` steps."""

    def __init__(self, encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int,
                 hires_steps: int | None = None, cache: dict[str, EncodedPrompt] | None = None):
        """`cache`: texts already encoded for this job (shared by its passes), filled in as texts come."""
        cache = {} if cache is None else cache
        before = len(cache)

        def encoded(text: str) -> EncodedPrompt:
            if text not in cache:
                cache[text] = encoder.encode(text)
            return cache[text]

        schedules = [[(end, encoded(text)) for end, text in prompt_schedule(p, steps, hires_steps)]
                     for p in (prompt, negative_prompt)]  # alternation: one text per step, encoded once each
        longest = max(e.chunks for schedule in schedules for _, e in schedule)
        # encoded empty chunks pad the shorter ones; encoding "" costs a text-encoder pass, so only when needed
        needs_padding = any(e.chunks < longest for schedule in schedules for _, e in schedule)
        empty = encoded("") if needs_padding else None
        self.positive, self.negative = (
            ScheduledPrompt(tuple((end, pad_to_chunks(e, longest, empty)) for end, e in schedule))
            for schedule in schedules)
        self.sdxl = encoder.sdxl
        self.pooled = getattr(encoder, "pooled", encoder.sdxl)  # SDXL, Flux and SD3 take pooled embeddings
        self.separate_negative = getattr(encoder, "separate_negative", False)  # Flux: true CFG in its own pass
        self.distinct_prompts = len(cache) - before  # texts this pass encoded

    def pipeline_arguments(self, batch: int, on_step) -> dict:
        """Keyword arguments for a diffusers SD/SDXL pipeline call: the first step's embeddings, and a step
        callback that runs `on_step` and then moves the conditioning to the next step's."""
        positive, negative = self.positive.at(0), self.negative.at(0)
        arguments = {"prompt_embeds": positive.embeds.repeat(batch, 1, 1),
                     "negative_prompt_embeds": negative.embeds.repeat(batch, 1, 1)}
        if self.pooled:
            arguments |= {"pooled_prompt_embeds": positive.pooled.repeat(batch, 1),
                          "negative_pooled_prompt_embeds": negative.pooled.repeat(batch, 1)}
        changes = len(self.positive.entries) > 1 or len(self.negative.entries) > 1
        inputs = ["latents"] + (["prompt_embeds"] + (["add_text_embeds"] if self.sdxl else []) if changes else [])

        def callback(pipe, step, timestep, tensors):
            tensors = on_step(pipe, step, timestep, tensors)
            if changes:
                tensors.update(self._step_tensors(pipe, step + 1, batch, tensors["prompt_embeds"]))
            return tensors

        return arguments | {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": inputs}

    def _step_tensors(self, pipe, step: int, batch: int, current: torch.Tensor) -> dict[str, torch.Tensor]:
        positive, negative = self.positive.at(step), self.negative.at(step)
        guided = getattr(pipe, "do_classifier_free_guidance", True) and not self.separate_negative

        def both(neg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            pair = torch.cat([neg.expand(batch, *neg.shape[1:]), pos.expand(batch, *pos.shape[1:])]) if guided \
                else pos.expand(batch, *pos.shape[1:])
            return pair.to(current.device, current.dtype)

        tensors = {"prompt_embeds": both(negative.embeds, positive.embeds)}
        if self.sdxl:
            tensors["add_text_embeds"] = both(negative.pooled, positive.pooled)
        return tensors
