"""The built-in scripts of the Script menu, in A1111's menu order."""
from __future__ import annotations

from backend.core.scripts import Script
from backend.generation.scripts.loopback import LOOPBACK
from backend.generation.scripts.outpainting_mk2 import OUTPAINTING_MK2
from backend.generation.scripts.poor_mans_outpainting import POOR_MANS_OUTPAINTING
from backend.generation.scripts.prompt_matrix import PROMPT_MATRIX
from backend.generation.scripts.prompts_from_file import PROMPTS_FROM_FILE
from backend.generation.scripts.sd_upscale import sd_upscale_script


def builtin_scripts(upscaler_names: list[str]) -> list[Script]:
    """`upscaler_names`: SD upscale's choices (the upscalers this server has now)."""
    # A1111 orders its menu by the scripts' file names (loopback.py ... sd_upscale.py); each tab shows its own
    return [LOOPBACK, OUTPAINTING_MK2, POOR_MANS_OUTPAINTING, PROMPT_MATRIX, PROMPTS_FROM_FILE,
            sd_upscale_script(upscaler_names)]
