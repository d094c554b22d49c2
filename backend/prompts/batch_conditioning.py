"""Conditioning for a batch whose images have prompts of their own (an extension such as wildcards chose them per
image): each image's scheduled conditioning (backend.prompts.conditioning) is padded to the longest and stacked
along the batch, and the step callback moves every image's conditioning on as its own schedule says."""
from __future__ import annotations

from collections.abc import Callable

import torch

from backend.prompts.conditioning import PassConditioning, ScheduledPrompt
from backend.prompts.encoding import EncodedPrompt, pad_to_chunks


class BatchConditioning:
    def __init__(self, passes: list[PassConditioning], empty: Callable[[], EncodedPrompt]):
        """`passes`: one per image, in batch order; `empty()` encodes the empty prompt that pads shorter ones."""
        schedules = [schedule for p in passes for schedule in (p.positive, p.negative)]
        longest = max(encoded.chunks for schedule in schedules for _, encoded in schedule.entries)
        short = any(encoded.chunks < longest for schedule in schedules for _, encoded in schedule.entries)
        padding = empty() if short else None

        def padded(schedule: ScheduledPrompt) -> ScheduledPrompt:
            return ScheduledPrompt(tuple((end, pad_to_chunks(e, longest, padding)) for end, e in schedule.entries))

        self.positive = [padded(p.positive) for p in passes]
        self.negative = [padded(p.negative) for p in passes]
        self.sdxl = passes[0].sdxl
        self.pooled = passes[0].pooled
        self.separate_negative = passes[0].separate_negative

    def _stacked(self, step: int, schedules: list[ScheduledPrompt], pooled: bool = False) -> torch.Tensor:
        return torch.cat([s.at(step).pooled if pooled else s.at(step).embeds for s in schedules])

    def pipeline_arguments(self, batch: int, on_step) -> dict:
        """As PassConditioning.pipeline_arguments, for exactly one image per pass."""
        if batch != len(self.positive):
            raise ValueError(f"a batch of {batch} images for {len(self.positive)} prompts")
        arguments = {"prompt_embeds": self._stacked(0, self.positive),
                     "negative_prompt_embeds": self._stacked(0, self.negative)}
        if self.pooled:
            arguments |= {"pooled_prompt_embeds": self._stacked(0, self.positive, pooled=True),
                          "negative_pooled_prompt_embeds": self._stacked(0, self.negative, pooled=True)}
        changes = any(len(s.entries) > 1 for s in self.positive + self.negative)
        inputs = ["latents"] + (["prompt_embeds"] + (["add_text_embeds"] if self.sdxl else []) if changes else [])

        def callback(pipe, step, timestep, tensors):
            tensors = on_step(pipe, step, timestep, tensors)
            if changes:
                tensors.update(self._step_tensors(pipe, step + 1, tensors["prompt_embeds"]))
            return tensors

        return arguments | {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": inputs}

    def _step_tensors(self, pipe, step: int, current: torch.Tensor) -> dict[str, torch.Tensor]:
        guided = getattr(pipe, "do_classifier_free_guidance", True) and not self.separate_negative

        def both(pooled: bool) -> torch.Tensor:
            positive = self._stacked(step, self.positive, pooled)
            pair = torch.cat([self._stacked(step, self.negative, pooled), positive]) if guided else positive
            return pair.to(current.device, current.dtype)

        tensors = {"prompt_embeds": both(False)}
        if self.sdxl:
            tensors["add_text_embeds"] = both(True)
        return tensors
