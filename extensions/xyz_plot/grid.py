"""Drawing the plot's grid (the app saves it: api.save_grid, as it saves its own grids).

Layout (every number in pixels; W x H is the size of the first cell's image, every cell is drawn at that size):

    font   = max(10, min(W, H) // 16)        line = font + 4
    top    = 3 * line + 2 * PAD   with a legend and an X axis, else 0   (the "X type: value" strip)
    left   = max(96, W * 3 // 4)  with a legend and a Y axis, else 0    (the "Y type: value" strip)
    title  = line + 2 * PAD       with a legend and a Z axis, else 0    (the "Z type: value" title)
    gap    = Z_GAP                with more than one Z value, else 0    (between the grids, side by side)
    grid_w = left + columns * W
    size   = (grids * grid_w + (grids - 1) * gap,  title + top + rows * H)

    cell (column x, row y, grid z) has its top-left corner at
        (z * (grid_w + gap) + left + x * W,  title + top + y * H)

With PAD = 4 and 64x64 images: font 10, line 14, top 50, left 96; a legended 2x2 grid is 224 x 178 pixels and
its cell (x, y) starts at (96 + 64 x, 50 + 64 y). Labels are drawn first and cells pasted over them, so a cell's
pixels are exactly its image's.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

PAD = 4
Z_GAP = 16
MIN_LEFT = 96
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass(frozen=True)
class Layout:
    cell_width: int
    cell_height: int
    columns: int
    rows: int
    grids: int
    top: int
    left: int
    title: int
    gap: int
    font_size: int

    @classmethod
    def plan(cls, cell_size: tuple[int, int], columns: int, rows: int, grids: int,
             legend_x: bool, legend_y: bool, legend_z: bool) -> Layout:
        width, height = cell_size
        font_size = max(10, min(width, height) // 16)
        line = font_size + 4
        return cls(width, height, columns, rows, grids,
                   top=3 * line + 2 * PAD if legend_x else 0,
                   left=max(MIN_LEFT, width * 3 // 4) if legend_y else 0,
                   title=line + 2 * PAD if legend_z else 0,
                   gap=Z_GAP if grids > 1 else 0, font_size=font_size)

    @property
    def line(self) -> int:
        return self.font_size + 4

    @property
    def grid_width(self) -> int:
        return self.left + self.columns * self.cell_width

    @property
    def size(self) -> tuple[int, int]:
        return (self.grids * self.grid_width + (self.grids - 1) * self.gap,
                self.title + self.top + self.rows * self.cell_height)

    def grid_origin(self, grid: int) -> int:
        return grid * (self.grid_width + self.gap)

    def cell_origin(self, column: int, row: int, grid: int) -> tuple[int, int]:
        return (self.grid_origin(grid) + self.left + column * self.cell_width,
                self.title + self.top + row * self.cell_height)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(draw, font, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a word too long is broken between characters); lines past
    `max_lines` are dropped and the last kept line ends with an ellipsis."""
    fits = lambda candidate: draw.textlength(candidate, font=font) <= width  # noqa: E731
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and fits(candidate):
            lines[-1] = candidate
            continue
        piece = ""
        for character in word:
            if piece and not fits(piece + character):
                lines.append(piece)
                piece = ""
            piece += character
        lines.append(piece)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and not fits(last + "…"):
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def _label(draw, font, text: str, box: tuple[int, int, int, int], line: int):
    """`text` centred in `box` (left, top, right, bottom), wrapped to fit inside its padding."""
    left, top, right, bottom = box
    lines = _wrap(draw, font, text, max(1, right - left - 2 * PAD), max(1, (bottom - top - 2 * PAD) // line))
    y = top + (bottom - top - len(lines) * line) // 2
    for text_line in lines:
        x = left + (right - left - draw.textlength(text_line, font=font)) / 2
        draw.text((x, y + 2), text_line, fill=TEXT, font=font)
        y += line


def draw_grid(plot, images: dict[tuple[int, int, int], object], draw_legend: bool):
    """The grid as a PIL image. `images` maps (column, row, grid) to that cell's PIL image; a missing cell (a
    skipped batch) stays blank. Returns (image, layout)."""
    from PIL import Image, ImageDraw
    first = next(iter(images.values()))
    layout = Layout.plan(first.size, len(plot.x.values), len(plot.y.values), len(plot.z.values),
                         draw_legend and plot.x.used, draw_legend and plot.y.used, draw_legend and plot.z.used)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font(layout.font_size)
    for grid in range(layout.grids):
        origin = layout.grid_origin(grid)
        if layout.title:
            _label(draw, font, plot.z.label(grid), (origin, 0, origin + layout.grid_width, layout.title), layout.line)
        for column in range(layout.columns if layout.top else 0):
            x, y = layout.cell_origin(column, 0, grid)
            _label(draw, font, plot.x.label(column), (x, y - layout.top, x + layout.cell_width, y), layout.line)
        for row in range(layout.rows if layout.left else 0):
            x, y = layout.cell_origin(0, row, grid)
            _label(draw, font, plot.y.label(row), (x - layout.left, y, x, y + layout.cell_height), layout.line)
    for (column, row, grid), image in images.items():  # pasted last: labels never cover a cell's pixels
        if image.size != first.size:  # e.g. a checkpoint with another default size: scaled to the first cell's
            image = image.resize(first.size, Image.LANCZOS)
        canvas.paste(image.convert("RGB"), layout.cell_origin(column, row, grid))
    return canvas, layout


def encode_png(image, infotext: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # A1111's chunk: "PNG Info" and infotext pasting read it
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
