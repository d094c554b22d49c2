"""The bundled X/Y/Z plot extension: value parsing, the grid's layout, and real plots run through services."""
from __future__ import annotations

import datetime
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.core.requests import Img2ImgRequest, Txt2ImgRequest
from extensions.xyz_plot import axes, grid

EXTENSION = Path(__file__).resolve().parent.parent / "extensions" / "xyz_plot"
TINY = dict(prompt="a cat", negative_prompt="blurry", steps=2, width=64, height=64, seed=7)


def plot_args(**values) -> dict:
    return {"extension_args": {"xyz_plot": values}}


# --- value parsing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, text, expected", [
    ("int", "1, 2, 5", [1, 2, 5]),
    ("int", "1-5", [1, 2, 3, 4, 5]),
    ("int", "1-10 (+3)", [1, 4, 7, 10]),
    ("int", "10-20 [3]", [10, 15, 20]),
    ("int", "5-3", [5, 4, 3]),
    ("int", "1-3, 8, 10-12 (+2)", [1, 2, 3, 8, 10, 12]),
    ("int", "-1, 3", [-1, 3]),
    ("float", "5-8 (+1.5)", [5.0, 6.5, 8.0]),
    ("float", "0.2-0.8 [4]", [0.2, 0.4, 0.6, 0.8]),
    ("float", "0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),
    ("float", "7, 7.5", [7.0, 7.5]),
    ("text", 'Euler a, "DPM++ 2M, Karras", DDIM', ["Euler a", "DPM++ 2M, Karras", "DDIM"]),
    ("text", " a ,, b ,", ["a", "b"]),
    ("prompt_sr", ["cat", "dog"], ["cat", "dog"]),
])
def test_values_follow_a1111_syntax(kind, text, expected):
    assert axes.parse_values(kind, text, "arg") == pytest.approx(expected)


@pytest.mark.parametrize("kind, text, message", [
    ("int", "1, two", "'two' is not a whole number"),
    ("int", "2.5", "'2.5' is not a whole number"),
    ("float", "seven", "'seven' is not a number"),
    ("int", "", "no values given"),
    ("int", " , ", "no values given"),
    ("int", "1-5 (+0)", "never gets from 1 to 5"),
    ("int", "1-5 (-1)", "never gets from 1 to 5"),
    ("int", "1-5 [0]", "asks for 0 values"),
    ("int", "1-1000000000", "at most 64 cells"),
    ("int", "1-10 [100]", "at most 64 cells"),
    ("int", True, "must be text"),
])
def test_bad_values_name_the_argument(kind, text, message):
    with pytest.raises(ValueError) as error:
        axes.parse_values(kind, text, "extension_args.xyz_plot.x_values")
    assert str(error.value).startswith("extension_args.xyz_plot.x_values: ")
    assert message in str(error.value)


def plan(**values):
    return axes.plan_plot(Txt2ImgRequest(**TINY, **plot_args(**values)), "xyz_plot")


def test_plan_orders_cells_z_then_y_then_x_and_sets_the_fields():
    plot = plan(x_type="Seed", x_values="1,2", y_type="CFG Scale", y_values="5-6 (+1)", z_type="Sampler",
                z_values="Euler, DDIM")
    assert [(c.grid, c.row, c.column) for c in plot.cells][:3] == [(0, 0, 0), (0, 0, 1), (0, 1, 0)]
    assert len(plot.cells) == 8 and plot.draw_legend and plot.include_lone_images
    last = plot.cells[-1].request
    assert (last.seed, last.cfg_scale, last.sampler_name, last.steps) == (2, 6.0, "DDIM", 2)
    assert plot.x.label(1) == "Seed: 2" and plot.y.label(0) == "CFG Scale: 5" and plot.z.label(1) == "Sampler: DDIM"


def test_plan_is_none_when_every_axis_is_nothing():
    assert plan() is None
    assert plan(x_type="Nothing", x_values="1,2", y_type="Nothing", z_type="Nothing") is None
    assert axes.plan_plot(Txt2ImgRequest(**TINY), "xyz_plot") is None


def test_prompt_search_and_replace_changes_prompt_and_negative_prompt():
    request = Txt2ImgRequest(**{**TINY, "prompt": "a cat on a mat", "negative_prompt": "cat hair"},
                             **plot_args(x_type="Prompt S/R", x_values="cat, dog, big bird"))
    cells = axes.plan_plot(request, "xyz_plot").cells
    prompts = [(cell.request.prompt, cell.request.negative_prompt) for cell in cells]
    assert prompts == [("a cat on a mat", "cat hair"), ("a dog on a mat", "dog hair"),
                       ("a big bird on a mat", "big bird hair")]


def test_random_seeds_are_fixed_and_other_fields_kept():
    plot = plan(x_type="Seed", x_values="-1, 3", y_type="Checkpoint name", y_values="tiny-sd1-other",
                include_lone_images=False)
    seeds = [cell.request.seed for cell in plot.cells]
    assert seeds[0] != -1 and 0 <= seeds[0] < 2**32 and seeds[1] == 3
    assert {cell.request.checkpoint for cell in plot.cells} == {"tiny-sd1-other"}
    assert all(cell.request.save_images is False for cell in plot.cells)  # lone images are not saved
    assert plot.x.label(0) == f"Seed: {seeds[0]}"


def test_positional_args_as_a1111_alwayson_scripts_send_them():
    request = Txt2ImgRequest(**TINY, extension_args={"xyz_plot": {"args": ["Steps", "2, 3", "Nothing", "", "Nothing",
                                                                           "", False, False]}})
    plot = axes.plan_plot(request, "xyz_plot")
    assert [cell.request.steps for cell in plot.cells] == [2, 3] and not plot.draw_legend


@pytest.mark.parametrize("values, message", [
    (dict(x_type="Colour", x_values="1"), "extension_args.xyz_plot.x_type: unknown axis type 'Colour'"),
    (dict(y_type="Steps", y_values=""), "extension_args.xyz_plot.y_values: no values given"),
    (dict(z_type="Steps", z_values="2, 0"), "extension_args.xyz_plot.z_values: steps: must be between 1 and 150"),
    (dict(x_type="CFG Scale", x_values="50"), "extension_args.xyz_plot.x_values: cfg_scale: must be between"),
    (dict(x_type="Denoising", x_values="0.5, 1.5"), "extension_args.xyz_plot.x_values: denoising_strength:"),
    (dict(x_type="Sampler", x_values="Euler, Nope"), "extension_args.xyz_plot.x_values: sampler_name: unknown"),
    (dict(x_type="Prompt S/R", x_values="horse, dog"), "extension_args.xyz_plot.x_values: 'horse'"),
    (dict(x_type="Seed", x_values="1-8", y_type="Seed", y_values="1-9"), "extension_args.xyz_plot: the plot has 72"),
    (dict(x_type="Seed", x_values="1", draw_legend="maybe"), "extension_args.xyz_plot.draw_legend: must be true"),
    (dict(x_type="Seed", x_values="1", colour=3), "extension_args.xyz_plot: unknown argument(s) colour"),
])
def test_plan_errors_name_the_argument(values, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        plan(**values)


# --- layout and saving, without generating ------------------------------------------------------------------

def solid(colour, size=(64, 64)):
    return Image.new("RGB", size, colour)


def test_layout_formula_with_every_axis():
    plot = plan(x_type="Seed", x_values="1,2,3", y_type="Steps", y_values="2,3", z_type="CFG Scale", z_values="5,6")
    colours = {(c.column, c.row, c.grid): (40 * c.column + 1, 60 * c.row + 2, 100 * c.grid + 3) for c in plot.cells}
    canvas, layout = grid.draw_grid(plot, {key: solid(colour) for key, colour in colours.items()}, True)
    # 64x64 cells: font 10, line 14 -> top 3*14+8 = 50, left max(96, 48) = 96, title 14+8 = 22, gap 16
    assert (layout.top, layout.left, layout.title, layout.gap) == (50, 96, 22, 16)
    grid_width = 96 + 3 * 64
    assert canvas.size == (2 * grid_width + 16, 22 + 50 + 2 * 64)
    for (column, row, z), colour in colours.items():
        left, top = z * (grid_width + 16) + 96 + 64 * column, 22 + 50 + 64 * row
        assert layout.cell_origin(column, row, z) == (left, top)
        cell = np.asarray(canvas.crop((left, top, left + 64, top + 64)))
        assert (cell == colour).all()
    labels = np.asarray(canvas.crop((0, 0, canvas.width, 72)))
    assert (labels < 128).any()  # some dark label text above the cells


def test_layout_without_legend_is_just_the_cells():
    plot = plan(x_type="Seed", x_values="1,2", y_type="Steps", y_values="2,3")
    canvas, layout = grid.draw_grid(plot, {(0, 0, 0): solid((9, 9, 9)), (1, 1, 0): solid((8, 8, 8), (32, 32))},
                                    False)
    assert canvas.size == (128, 128) and layout.cell_origin(1, 1, 0) == (64, 64)
    assert canvas.getpixel((100, 100)) == (8, 8, 8)  # a smaller cell is scaled to the first cell's size
    assert canvas.getpixel((100, 10)) == grid.BACKGROUND  # a missing cell stays blank


def test_long_labels_are_wrapped_inside_their_strip():
    plot = plan(x_type="Prompt S/R", x_values="cat, " + "a very long replacement text " * 6)
    canvas, layout = grid.draw_grid(plot, {(0, 0, 0): solid((1, 2, 3)), (1, 0, 0): solid((4, 5, 6))}, True)
    assert canvas.size == (128, 50 + 64) and layout.left == 0  # no Y axis: no left strip
    assert (np.asarray(canvas.crop((64, 50, 128, 114))) == (4, 5, 6)).all()


def test_section_components_have_the_documented_ids():
    gr = pytest.importorskip("gradio")
    from extensions.xyz_plot import build_section
    with gr.Blocks():
        components = build_section("img2img")
    assert list(components) == list(axes.ARGUMENTS)
    assert components["x_type"].elem_id == "img2img_xyz_x_type"
    assert components["z_values"].elem_id == "img2img_xyz_z_values"
    assert components["include_lone_images"].value is True and components["draw_legend"].value is True


# --- real plots through services ----------------------------------------------------------------------------

@pytest.fixture
def xyz_services(make_services, tmp_path):
    folder = tmp_path / "extensions"
    shutil.copytree(EXTENSION, folder / "xyz_plot", ignore=shutil.ignore_patterns("__pycache__"))
    services = make_services(extensions_dir=folder)
    record = next(record for record in services.extensions.records if record.name == "xyz_plot")
    assert record.loaded and record.version == "1.1", record.error
    return services


def generate(services, request):
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    return job.result


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_grid_cells_match_single_generations(xyz_services, tmp_path):
    assert [s.title for s in xyz_services.extensions.hooks.sections] == ["X/Y/Z plot"]
    result = generate(xyz_services, Txt2ImgRequest(**TINY, **plot_args(x_type="Seed", x_values="1,2",
                                                                       y_type="Steps", y_values="2,3")))
    grid_image, *lone = result.images
    assert len(lone) == 4 and [(image.seed, parse_infotext(image.infotext)["Steps"]) for image in lone] == \
        [(1, "2"), (2, "2"), (1, "3"), (2, "3")]
    canvas = Image.open(io.BytesIO(grid_image.png))
    assert canvas.size == (96 + 2 * 64, 50 + 2 * 64)  # left legend + 2 cells wide, top legend + 2 cells high
    for row, steps in enumerate((2, 3)):
        for column, seed in enumerate((1, 2)):
            single = generate(xyz_services, Txt2ImgRequest(**{**TINY, "seed": seed, "steps": steps}, save_images=False))
            left, top = 96 + 64 * column, 50 + 64 * row
            cell = np.asarray(canvas.convert("RGB").crop((left, top, left + 64, top + 64)))
            assert np.array_equal(cell, pixels(single.images[0].png)), (column, row)
    folder = tmp_path / "outputs" / "txt2img-grids" / datetime.date.today().isoformat()
    assert grid_image.path == str(folder / "grid-00000.png") and Path(grid_image.path).read_bytes() == grid_image.png
    assert Image.open(grid_image.path).info["parameters"] == lone[0].infotext == grid_image.infotext
    assert all(image.path and Path(image.path).is_file() for image in lone)  # the single images are saved too


def test_prompt_sr_and_checkpoint_axes(xyz_services, tmp_path):
    result = generate(xyz_services, Txt2ImgRequest(
        **TINY, save_images=False, **plot_args(x_type="Prompt S/R", x_values="cat, dog", z_type="Checkpoint name",
                                              z_values="tiny-sd1, tiny-sd1-other")))
    grid_image, *lone = result.images
    facts = [(image.prompt, parse_infotext(image.infotext)["Prompt"], parse_infotext(image.infotext)["Model"])
             for image in lone]
    assert facts == [("a cat", "a cat", "tiny-sd1"), ("a dog", "a dog", "tiny-sd1"),
                     ("a cat", "a cat", "tiny-sd1-other"), ("a dog", "a dog", "tiny-sd1-other")]
    canvas = Image.open(io.BytesIO(grid_image.png)).convert("RGB")
    grid_width = 2 * 64  # no Y axis: no left strip; Z title 22 px and X strip 50 px above the cells
    assert canvas.size == (2 * grid_width + 16, 22 + 50 + 64)
    for index, image in enumerate(lone):
        column, z = index % 2, index // 2
        left = z * (grid_width + 16) + 64 * column
        assert np.array_equal(np.asarray(canvas.crop((left, 72, left + 64, 136))), pixels(image.png)), index
    assert grid_image.path is None and not (tmp_path / "outputs" / "txt2img-grids").exists()


def test_without_lone_images_only_the_grid_is_returned_and_saved(xyz_services, tmp_path):
    result = generate(xyz_services, Txt2ImgRequest(**TINY, **plot_args(
        x_type="Steps", x_values="2,3", draw_legend=False, include_lone_images=False)))
    (grid_image,) = result.images
    assert Image.open(io.BytesIO(grid_image.png)).size == (128, 64)
    assert Path(grid_image.path).is_file() and not (tmp_path / "outputs" / "txt2img-images").exists()


def test_img2img_denoising_axis_saves_an_img2img_grid(xyz_services, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    request = Img2ImgRequest(**TINY, init_image=buffer.getvalue(),
                             **plot_args(x_type="Denoising", x_values="0.5, 1"))
    grid_image, *lone = generate(xyz_services, request).images
    assert [parse_infotext(image.infotext)["Denoising strength"] for image in lone] == ["0.5", "1"]
    assert Path(grid_image.path).parent.parent.name == "img2img-grids"


def test_the_grid_follows_the_grid_options(xyz_services, tmp_path):
    """Saved by the app (api.save_grid) as its own grids: grid_format, outdir_txt2img_grids, grid_save; numbered."""
    plot = plot_args(x_type="Seed", x_values="1,2", include_lone_images=False)
    jpg = generate(xyz_services, Txt2ImgRequest(**TINY, **plot, override_settings={
        "grid_format": "jpg", "outdir_txt2img_grids": str(tmp_path / "outputs" / "plots")}))
    again = generate(xyz_services, Txt2ImgRequest(**TINY, **plot, override_settings={"grid_format": "jpg"}))
    first, second = Path(jpg.images[0].path), Path(again.images[0].path)
    assert first.suffix == ".jpg" and first.parent.parent == tmp_path / "outputs" / "plots"
    assert Image.open(first).format == "JPEG"
    assert read_infotext(Image.open(first)) == jpg.images[0].infotext  # in EXIF, as A1111 writes JPEG infotext
    assert second.name == "grid-00000.jpg" and second.parent.parent.name == "txt2img-grids"
    third = generate(xyz_services, Txt2ImgRequest(**TINY, **plot, override_settings={"grid_format": "jpg"}))
    assert Path(third.images[0].path).name == "grid-00001.jpg"
    unsaved = generate(xyz_services, Txt2ImgRequest(**TINY, **plot, override_settings={"grid_save": False}))
    assert unsaved.images[0].path is None and unsaved.images[0].is_grid


def test_a_bad_value_fails_the_job_with_its_message(xyz_services):
    job = xyz_services.jobs.run_and_wait(Txt2ImgRequest(**TINY, **plot_args(x_type="Steps", x_values="2, many")),
                                         timeout=300)
    assert job.status == "failed"
    assert job.error.startswith("extension_args.xyz_plot.x_values: 'many' is not a whole number")
    assert not xyz_services.extensions.hooks.hook_errors.get("xyz_plot")  # the user's mistake, not a bug


def test_a_failing_cell_fails_the_job_instead_of_running_a_plain_generation(xyz_services, tmp_path):
    job = xyz_services.jobs.run_and_wait(Txt2ImgRequest(**TINY, **plot_args(
        x_type="Checkpoint name", x_values="tiny-sd1.safetensors, nope.safetensors")), timeout=300)
    assert job.status == "failed" and "nope.safetensors" in job.error


def test_controlnet_weight_axis_sets_every_units_weight_and_labels_the_grid(xyz_services, models_dir):
    from backend.core.controlnet_units import parse_unit_infotext
    from tools.tiny_controlnets import write_tiny_controlnet

    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_canny.safetensors", "sd1", seed=1, strength=0.3)
    xyz_services.controlnets.folder.refresh()
    edges = Image.new("RGB", (64, 64), "white")
    edges.paste("black", (16, 16, 48, 48))
    buffer = io.BytesIO()
    edges.save(buffer, format="PNG")
    unit = {"module": "canny", "model": "control_sd15_canny", "image": buffer.getvalue(), "processor_res": 64}
    request = Txt2ImgRequest(**TINY, save_images=False, controlnet_units=[unit, {**unit, "guidance_end": 0.5}],
                             **plot_args(x_type="[ControlNet] Weight", x_values="0, 0.8"))
    plot = axes.plan_plot(request, "xyz_plot")
    assert [plot.x.label(index) for index in range(2)] == ["[ControlNet] Weight: 0", "[ControlNet] Weight: 0.8"]
    grid_image, *lone = generate(xyz_services, request).images
    weights = [[parse_unit_infotext(parse_infotext(image.infotext)[f"ControlNet {n}"])["weight"] for n in (0, 1)]
               for image in lone]
    assert weights == [[0.0, 0.0], [0.8, 0.8]]
    assert np.abs(pixels(lone[0].png).astype(int) - pixels(lone[1].png)).mean() > 1
    plain = generate(xyz_services, Txt2ImgRequest(**TINY, save_images=False))
    assert np.array_equal(pixels(lone[0].png), pixels(plain.images[0].png))  # weight 0: as without ControlNet
    with pytest.raises(ValueError, match="x_values: the \\[ControlNet\\] Weight axis .* has none enabled"):
        axes.plan_plot(Txt2ImgRequest(**TINY, **plot_args(x_type="[ControlNet] Weight", x_values="1")), "xyz_plot")
