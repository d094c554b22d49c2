"""Hires fix sizes, as A1111 computes them: the final size, and the size the first pass is upscaled to
before it is cropped to the final size (only when both hr_resize_x and hr_resize_y are given and the
aspect ratio differs)."""
from __future__ import annotations

from dataclasses import dataclass

from backend.core.errors import UserError

SIZE_LIMITS = (64, 2048)  # the same as txt2img's own width/height (backend.core.requests.SIZE_RANGE)


@dataclass(frozen=True)
class HiresSizes:
    final: tuple[int, int]  # width, height of the result
    upscaled: tuple[int, int]  # width, height the first pass is upscaled to; >= final, same aspect as it


def hires_sizes(width: int, height: int, hr_scale: float, hr_resize_x: int, hr_resize_y: int) -> HiresSizes:
    """ValueError("<field>: ...") when the final size cannot be generated."""
    if not hr_resize_x and not hr_resize_y:
        field, final = "hr_scale", (int(width * hr_scale), int(height * hr_scale))
        upscaled = final
    elif not hr_resize_y:
        field, final = "hr_resize_x", (hr_resize_x, hr_resize_x * height // width)
        upscaled = final
    elif not hr_resize_x:
        field, final = "hr_resize_y", (hr_resize_y * width // height, hr_resize_y)
        upscaled = final
    else:
        # Both given: upscale to cover the target keeping the first pass's aspect ratio, then crop.
        field, final = "hr_resize_x", (hr_resize_x, hr_resize_y)
        if width / height < hr_resize_x / hr_resize_y:
            upscaled = (hr_resize_x, hr_resize_x * height // width)
        else:
            upscaled = (hr_resize_y * width // height, hr_resize_y)
    final_width, final_height = final
    low, high = SIZE_LIMITS
    if not (low <= final_width <= high and low <= final_height <= high):
        raise UserError(field, f"the hires size would be {final_width}x{final_height}; "
                        f"each side must be between {low} and {high}")
    if final_width % 8 or final_height % 8:
        raise UserError(field, f"the hires size would be {final_width}x{final_height}, but both sides must be "
                        "multiples of 8; pick a scale that gives multiples of 8 or set hr_resize_x and hr_resize_y")
    return HiresSizes(final=final, upscaled=upscaled)
