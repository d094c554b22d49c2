"""Sampling steps as the user set them, from the pipelines' step callbacks.

A diffusers pipeline calls its step callback once per model call: a second-order sampler (Heun, DPM2, DPM++ SDE)
makes 2N-1 calls for N steps, PLMS N+1. A1111 shows "Step k/N" with the user's N, and one count over both
passes of a hires fix, so each pass's calls are mapped onto its share of the user's steps.
"""
from __future__ import annotations


def steps_run(steps: int, strength: float) -> int:
    """Steps an img2img pass of `steps` at denoising `strength` runs (diffusers' rule: int(steps * strength))."""
    return min(int(steps * strength), steps) if strength > 0 else 0


class StepCounter:
    """`pass_steps`: the user's steps of each pipeline call of one batch, in order (txt2img: [steps]; hires fix:
    [steps, second pass]; img2img: [steps run at the denoising strength])."""

    def __init__(self, pass_steps: list[int]):
        self.pass_steps = [steps for steps in pass_steps if steps > 0]
        self.per_batch = sum(self.pass_steps)
        self.start_batch()

    def start_batch(self):
        self._pass = -1

    def after_call(self, call_index: int, calls: int) -> int:
        """Steps of this batch done after the callback of model call `call_index` (0-based) of a pass of `calls`
        calls; a call index of 0 begins the batch's next pass."""
        if call_index == 0:
            self._pass += 1
        if self._pass >= len(self.pass_steps):  # a pass nobody announced (an extension's): count its calls
            return self.per_batch
        before = sum(self.pass_steps[:self._pass])
        steps = self.pass_steps[self._pass]
        return before + min(steps, (call_index + 1) * steps // max(calls, 1))
