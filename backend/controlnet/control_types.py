"""sd-webui-controlnet's "Control Type" filter: a tag (Canny, Inpaint, IP-Adapter, ...) picks the preprocessors
tagged with it and the models whose names match it, with the defaults the extension selects. The REST route
/controlnet/control_types and the UI's radio answer from here."""
from __future__ import annotations

from typing import Any

from backend.controlnet.builtin_controlnet import BUILTIN_CONTROL_TYPES, BUILTIN_CONTROLNET_FILE
from backend.controlnet.catalog import PreprocessorCatalog

# the extension's tag -> model-name filters (Preprocessor.tag_to_filters)
TAG_FILTERS = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
               "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
               "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
               "scribble": ["sketch"], "tile": ["blur"]}


def model_matches(title: str, tag: str) -> bool:
    """The extension matches a model to a tag by its name; the built-in demo ControlNet's name says nothing of what
    it was trained for, so it is matched by that."""
    if title.rsplit(" [", 1)[0] == BUILTIN_CONTROLNET_FILE.stem and tag in BUILTIN_CONTROL_TYPES:
        return True
    return any(name in title.lower() for name in {tag.lower(), *TAG_FILTERS.get(tag.lower(), [])})


def control_type(tag: str, catalog: PreprocessorCatalog, models: list[str]) -> dict[str, Any]:
    """The extension's select_control_type: the tag's preprocessors, the models whose names match it, defaults."""
    if tag == "All":
        return {"module_list": catalog.public_names(), "model_list": ["None", *models], "default_option": "none",
                "default_model": "None"}
    matching = [model for model in models if model_matches(model, tag)]
    default_model = "None"
    if matching:
        default_model = next((model for model in matching if "11" in model.split("[")[0]), matching[0])
    preprocessors = [p.public_name for p in catalog.with_tag(tag)]
    return {"module_list": preprocessors, "model_list": ["None", *matching],
            "default_option": preprocessors[0] if len(preprocessors) == 1 else preprocessors[1],
            "default_model": default_model}
