"""X/Y/Z plot, as A1111's script: one generation per cell, varying up to three settings, drawn as a labelled grid.

It uses only the extension API: a form section for its arguments and a generation wrapper that runs the cells.
"""
from __future__ import annotations

import io

from .axes import ARGUMENTS, AXIS_TYPE_NAMES, plan_plot
from .grid import draw_grid, encode_png, save_grid

__version__ = "1.1"
TITLE = "X/Y/Z plot"


def build_section(tab: str) -> dict:
    """The form's accordion: a type and its values per axis, and two options. Returns {argument: component}."""
    import gradio as gr
    components = {}
    for letter in ("x", "y", "z"):
        with gr.Row():
            components[f"{letter}_type"] = gr.Dropdown(
                list(AXIS_TYPE_NAMES), value="Nothing", label=f"{letter.upper()} type", scale=1,
                elem_id=f"{tab}_xyz_{letter}_type")
            components[f"{letter}_values"] = gr.Textbox(
                label=f"{letter.upper()} values", lines=1, scale=3, elem_id=f"{tab}_xyz_{letter}_values",
                placeholder='e.g. 1, 2, 3  or  1-10 (+3)  or  0.2-0.8 [4]  or  "a, b", c')
    with gr.Row():
        components["draw_legend"] = gr.Checkbox(value=True, label="Draw legend", elem_id=f"{tab}_xyz_draw_legend")
        components["include_lone_images"] = gr.Checkbox(value=True, label="Include sub images",
                                                        elem_id=f"{tab}_xyz_include_lone_images")
    return components


def _first_image(result):
    return result.images[0] if result.images else None


def run_plot(api, request, run):
    """The generation wrapper: a plain run(request) unless the request asks for a plot."""
    try:
        plot = plan_plot(request, api.name)  # checks every value before anything is generated
    except ValueError as error:  # bad input: the job fails with a message naming the argument
        raise api.InputError(str(error)) from None
    if plot is None:
        return run(request)
    from PIL import Image
    results = []
    for cell in plot.cells:  # z outer, y, x inner
        results.append((cell, run(cell.request)))
        if results[-1][1].interrupted:  # the user stopped the job: keep what was made, draw no grid
            break
    interrupted = results[-1][1].interrupted
    warnings = list(dict.fromkeys(w for _, result in results for w in result.warnings))
    lone = [image for _, result in results for image in result.images]
    firsts = {(cell.column, cell.row, cell.grid): _first_image(result) for cell, result in results}
    firsts = {key: image for key, image in firsts.items() if image is not None}  # a skipped batch has none
    first_result = results[0][1]
    if interrupted or not firsts:
        return first_result.model_copy(update={"images": lone, "interrupted": interrupted, "warnings": warnings})
    cell_images = {key: Image.open(io.BytesIO(image.png)) for key, image in firsts.items()}
    canvas, _ = draw_grid(plot, cell_images, plot.draw_legend)
    source = next(iter(firsts.values()))  # the first cell's infotext describes the grid, as in A1111
    png = encode_png(canvas, source.infotext)
    path = None
    if request.save_images and api.outputs_dir is not None:
        path = save_grid(png, api.outputs_dir, "img2img" if hasattr(request, "init_image") else "txt2img")
    grid_image = type(source)(png=png, path=path and str(path), seed=source.seed, prompt=source.prompt,
                              negative_prompt=source.negative_prompt, infotext=source.infotext, is_grid=True)
    images = [grid_image] + (lone if plot.include_lone_images else [])
    return first_result.model_copy(update={"images": images, "warnings": warnings})


def script_args(api) -> list:
    """The Script menu's arguments, in ARGUMENTS order (axis types by name)."""
    arg = api.ScriptArg
    axes = []
    for letter in ("X", "Y", "Z"):
        axes += [arg(f"{letter} type", "Nothing", "dropdown", choices=AXIS_TYPE_NAMES), arg(f"{letter} values", "")]
    return [*axes, arg("Draw legend", True, "checkbox"), arg("Include Sub Images", True, "checkbox")]


def run_from_menu(api, job):
    """The Script menu's "X/Y/Z plot": the same plot, its arguments given positionally (job.args)."""
    request = job.request.model_copy(update={"extension_args": {**job.request.extension_args,
                                                                api.name: dict(zip(ARGUMENTS, job.args))}})

    def run_cell(cell):  # each cell is a plain generation: without the plot's own arguments
        others = {name: value for name, value in cell.extension_args.items() if name != api.name}
        return job.generate(cell.model_copy(update={"extension_args": others}))

    return run_plot(api, request, run_cell)


def register(api):
    major, minor = map(int, api.version.split("."))
    if major != 1:
        raise RuntimeError(f"{TITLE} needs extension API 1.x; this app has {api.version}")
    api.add_section(TITLE, build_section)
    api.wrap_generation(lambda request, run: run_plot(api, request, run))
    if minor >= 2:  # the Script menu (API 1.2): one implementation, selectable there too
        api.add_script(TITLE, script_args(api), lambda job: run_from_menu(api, job))
