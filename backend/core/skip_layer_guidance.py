"""SD3.5's skip-layer guidance (ComfyUI's SkipLayerGuidanceSD3, diffusers' StableDiffusion3Pipeline
`skip_guidance_layers`): between `start` and `stop` (fractions of the steps) a third transformer pass leaves out the
listed layers, and the image is pushed away from that pass by `scale`. Off while no layer is listed."""
from __future__ import annotations

MAX_LAYER = 99  # a layer index's bound before the model is known (SD3.5 large has 38 layers)
MAX_LAYERS = 16
SCALE_RANGE = (0.0, 10.0)  # ComfyUI's node
DEFAULT_SCALE, DEFAULT_START, DEFAULT_STOP = 2.8, 0.01, 0.2  # diffusers' defaults; SD3.5 medium suggests 7, 8, 9
INFOTEXT_KEYS = {"SLG layers": "skip_guidance_layers", "SLG scale": "skip_layer_guidance_scale",
                 "SLG start": "skip_layer_guidance_start", "SLG stop": "skip_layer_guidance_stop"}


def parse_layers(value) -> list[int]:
    """Layer indices from a list or from text such as "7, 8, 9" (the UI's and the infotext's form); sorted, once
    each. ValueError names what is wrong."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [part.strip() for part in value.replace(";", ",").split(",")]
        try:
            value = [int(part) for part in parts if part]
        except ValueError:
            raise ValueError(f"must be layer numbers separated by commas, such as 7, 8, 9; got {value!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, int) and not isinstance(item, bool)
                                                      for item in value):
        raise ValueError("must be a list of layer numbers")
    layers = sorted(set(value))
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"at most {MAX_LAYERS} layers; got {len(layers)}")
    if layers and not 0 <= layers[0] <= layers[-1] <= MAX_LAYER:
        raise ValueError(f"each layer must be between 0 and {MAX_LAYER}; got {layers}")
    return layers


def layers_text(layers: list[int]) -> str:
    return ", ".join(str(layer) for layer in layers)
