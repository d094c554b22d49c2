"""A1111's image grids for the Script menu: images in rows and columns (image_grid), with the prompt matrix's
labels above the columns and left of the rows (draw_grid_annotations; an inactive part is drawn grey and struck
through).

Geometry, W x H the first image's size, `margin` the grid margins setting:
    font = (W + H) // 25, spacing = font // 2
    top  = lines * (font + spacing) + 2 * spacing   when there are column labels (lines: labels per column)
    left = W * 3 // 4                               when there are row labels
    size = (left + cols * W + (cols - 1) * margin,  top + rows * H + (rows - 1) * margin)
    image i is at column i % cols, row i // cols.
"""
from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)


def grid_rows(count: int, batch_size: int, n_rows: int) -> int:
    """A1111's image_grid row count for `count` images: the n_rows option (-1: about the square root, 0: the
    batch size), never more rows than images."""
    rows = n_rows if n_rows > 0 else batch_size if n_rows == 0 else round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """A1111's plain grid: cells of the first image's size, left to right then top to bottom, on black."""
    width, height = images[0].size
    cols, rows = grid_shape(len(images), rows)
    canvas = Image.new("RGB", (cols * width, rows * height), "black")
    for index, image in enumerate(images):
        canvas.paste(image.convert("RGB"), (index % cols * width, index // cols * height))
    return canvas


def grid_shape(count: int, rows: int) -> tuple[int, int]:
    """(columns, rows) for `count` images in `rows` rows."""
    rows = max(1, min(rows, count))
    return math.ceil(count / rows), rows


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has one bitmap size
        return ImageFont.load_default()


def annotated_grid(images: list[Image.Image], rows: int, column_labels: list[list[tuple[str, bool]]],
                   row_labels: list[list[tuple[str, bool]]], margin: int = 0) -> Image.Image:
    """`column_labels[c]` / `row_labels[r]`: (text, active) lines for that column / row ([] for none)."""
    width, height = images[0].size
    cols, rows = grid_shape(len(images), rows)
    font_size = max(8, (width + height) // 25)
    spacing = font_size // 2
    lines = max((len(labels) for labels in column_labels), default=0)
    top = lines * (font_size + spacing) + 2 * spacing if lines else 0
    left = width * 3 // 4 if any(row_labels) else 0
    canvas = Image.new("RGB", (left + cols * width + (cols - 1) * margin, top + rows * height + (rows - 1) * margin),
                       "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)

    def write(x: float, y: float, text: str, active: bool):
        draw.text((x, y), text, font=font, fill=ACTIVE if active else INACTIVE, anchor="mm")
        if not active:
            box = draw.textbbox((x, y), text, font=font, anchor="mm")
            middle = (box[1] + box[3]) // 2
            draw.line((box[0], middle, box[2], middle), fill=INACTIVE, width=max(1, font_size // 10))

    for column, labels in enumerate(column_labels[:cols]):
        centre = left + column * (width + margin) + width / 2
        for line, (text, active) in enumerate(labels):
            write(centre, spacing + line * (font_size + spacing) + font_size / 2, text, active)
    for row, labels in enumerate(row_labels[:rows]):
        middle = top + row * (height + margin) + height / 2
        first = middle - len(labels) * (font_size + spacing) / 2 + font_size / 2
        for line, (text, active) in enumerate(labels):
            write(left / 2, first + line * (font_size + spacing), text, active)
    for index, image in enumerate(images):
        column, row = index % cols, index // cols
        canvas.paste(image.convert("RGB"), (left + column * (width + margin), top + row * (height + margin)))
    return canvas
