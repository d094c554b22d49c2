"""The img2img tab's "Batch" sub-tab (A1111's): folders on the server in, results out under the inputs' names."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.core.requests import PNG_INFO_PROPS, RequestError
from backend.services import Services


@dataclass
class BatchInputs:
    input_dir: gr.Textbox
    output_dir: gr.Textbox
    mask_dir: gr.Textbox
    use_png_info: gr.Checkbox
    png_info_props: gr.CheckboxGroup

    @property
    def inputs(self) -> set:
        return {getattr(self, name) for name in self.__dataclass_fields__}

    def fields(self, values: dict, refused: str | None) -> dict:
        """The Img2ImgBatchRequest's own fields (the img2img settings come from the rest of the tab)."""
        if refused:  # checked before the folders are looked at, so nothing about them is revealed
            raise RequestError("input_dir", refused)
        input_dir = (values[self.input_dir] or "").strip()
        if not input_dir:
            raise RequestError("input_dir", "type the folder on the server whose images to process")
        return {"input_dir": input_dir, "output_dir": (values[self.output_dir] or "").strip(),
                "inpaint_mask_dir": (values[self.mask_dir] or "").strip(),
                "use_png_info": bool(values[self.use_png_info]),
                "png_info_props": list(values[self.png_info_props] or [])}


def build_batch_inputs(services: Services) -> BatchInputs:
    refused = services.settings.server_folders_refused
    note = refused.capitalize() if refused else None
    gr.Markdown("Process every image in a folder on the server with the settings below. Results are saved in the "
                "output folder under the input's name (empty: in the usual img2img outputs). With a mask folder, "
                "each image is inpainted with the mask of the same name.", elem_id="img2img_batch_help")
    input_dir = gr.Textbox(label="Input directory", interactive=not refused, info=note,
                           elem_id="img2img_batch_input_dir")
    output_dir = gr.Textbox(label="Output directory", interactive=not refused, elem_id="img2img_batch_output_dir")
    mask_dir = gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch processing only)",
                          interactive=not refused, elem_id="img2img_batch_inpaint_mask_dir")
    with gr.Accordion("PNG info", open=False, elem_id="img2img_batch_png_info"):
        use_png_info = gr.Checkbox(label="Append png info to prompts", value=False,
                                   elem_id="img2img_batch_use_png_info")
        props = gr.CheckboxGroup(list(PNG_INFO_PROPS), value=list(PNG_INFO_PROPS),
                                 label="Parameters to take from png info",
                                 info="Prompts from png info are appended to the prompts set above.",
                                 elem_id="img2img_batch_png_info_props")
    return BatchInputs(input_dir, output_dir, mask_dir, use_png_info, props)
