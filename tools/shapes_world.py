"""The small visual world of the built-in demo model: shapes, colours, sizes, positions and
backgrounds; a deterministic caption+image generator, and a simple deterministic detector that reads
an image back into those terms (used by the evaluation and the tests)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (245, 235, 40),
    "orange": (240, 120, 10), "purple": (140, 50, 180), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = {  # name -> (column, row) in a 3x3 grid
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0), "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
RADII = {"small": 8, None: 12, "big": 16}

SHAPE_WORDS = {"circle": ["circle", "disc", "disk", "round dot", "ball"], "square": ["square", "box", "block"],
               "triangle": ["triangle"], "star": ["star"]}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "big": ["big", "large", "huge"], None: [""]}
POSITION_WORDS = {
    "top left": ["in the top left", "in the top left corner", "at the upper left", "top-left"],
    "top": ["at the top", "in the top middle", "at the top centre", "up top"],
    "top right": ["in the top right", "in the top right corner", "at the upper right", "top-right"],
    "left": ["on the left", "at the left side", "in the middle left", "left"],
    "centre": ["in the centre", "in the center", "in the middle", "centered"],
    "right": ["on the right", "at the right side", "in the middle right", "right"],
    "bottom left": ["in the bottom left", "in the bottom left corner", "at the lower left", "bottom-left"],
    "bottom": ["at the bottom", "in the bottom middle", "at the bottom centre", "down below"],
    "bottom right": ["in the bottom right", "in the bottom right corner", "at the lower right", "bottom-right"],
}
BACKGROUND_WORDS = ["on a {bg} background", "against a {bg} background", "on {bg}", "with a {bg} backdrop",
                    "over a plain {bg} background"]
TEMPLATES = [
    "a {size} {colour} {shape} {position} {background}",
    "{size} {colour} {shape} {position}, {bg} background",
    "a {colour} {shape} {background}, {position}",
    "{bg} background with a {size} {colour} {shape} {position}",
    "there is a {size} {colour} {shape} {position} {background}",
    "{position} a {colour} {shape} {background}",
    "picture of a {size} {shape} coloured {colour} {position} {background}",
    "a {shape} in {colour} {position} {background}",
]


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str | None  # "small", "big" or None (medium)
    position: str | None  # a POSITIONS key, or None when the caption does not say


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeSpec, ...]
    background: str
    caption: str


def _clean(text: str) -> str:
    return " ".join(text.replace(" ,", ",").split())


def describe(spec: ShapeSpec, background: str, rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    position = rng.choice(POSITION_WORDS[spec.position]) if spec.position else ""
    return _clean(template.format(
        size=rng.choice(SIZE_WORDS[spec.size]), colour=spec.colour, shape=rng.choice(SHAPE_WORDS[spec.shape]),
        position=position, bg=background, background=rng.choice(BACKGROUND_WORDS).format(bg=background)))


def random_scene(rng: random.Random, two_object_size: str | None = "small", two_object_share: float = 0.2
                 ) -> Scene:
    """One object (any size and place), or (`two_object_share` of the time; the shipped model: 35%, the one before
    it one in five) two objects of `two_object_size` on the left and the right. Their caption names no size,
    which for one object means the default size (None), as in the shipped model's data (the one before it was
    trained on small ones). The share changes which scenes have two objects, not the random calls made for the
    others."""
    background = rng.choice(list(COLOURS))
    colours = [c for c in COLOURS if c != background]
    if rng.random() < two_object_share:  # two objects, placed on the left and the right
        first, second = rng.sample(colours, 2)
        shapes = [rng.choice(SHAPES), rng.choice(SHAPES)]
        objects = (ShapeSpec(shapes[0], first, two_object_size, "left"),
                   ShapeSpec(shapes[1], second, two_object_size, "right"))
        caption = _clean(f"a {first} {rng.choice(SHAPE_WORDS[shapes[0]])} on the left and a {second} "
                         f"{rng.choice(SHAPE_WORDS[shapes[1]])} on the right, {background} background")
        return Scene(objects, background, caption)
    spec = ShapeSpec(rng.choice(SHAPES), rng.choice(colours), rng.choice(["small", None, "big"]),
                     rng.choice([None, *POSITIONS]))
    return Scene((spec,), background, describe(spec, background, rng))


def _centre(spec: ShapeSpec, radius: int, rng: random.Random) -> tuple[float, float]:
    if spec.position is None:
        return rng.uniform(radius, SIZE - radius), rng.uniform(radius, SIZE - radius)
    column, row = POSITIONS[spec.position]
    cell = SIZE / 3
    x = (column + 0.5) * cell + rng.uniform(-2, 2)
    y = (row + 0.5) * cell + rng.uniform(-2, 2)
    return min(max(x, radius + 1), SIZE - radius - 1), min(max(y, radius + 1), SIZE - radius - 1)


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x, y - r), (x + r, y + r * 0.85), (x - r, y + r * 0.85)]
    if shape == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        return points
    raise ValueError(shape)


@dataclass(frozen=True)
class PlacedShape:
    """One object of a scene where render draws it: centre and radius in pixels of the SIZE x SIZE image."""
    spec: ShapeSpec
    x: float
    y: float
    radius: float


def place(scene: Scene, rng: random.Random) -> list[PlacedShape]:
    """Where render draws each object (the same random calls, in the same order, as render makes)."""
    placed = []
    for spec in scene.objects:
        radius = RADII[spec.size] * rng.uniform(0.9, 1.1)
        x, y = _centre(spec, radius, rng)
        placed.append(PlacedShape(spec, x, y, radius))
    return placed


def outline_points(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    """The closed outline of a shape as drawn by render (a circle as a 48-gon), for drawing it as a line."""
    if shape == "circle":
        return [(x + r * math.cos(2 * math.pi * k / 48), y + r * math.sin(2 * math.pi * k / 48)) for k in range(48)]
    if shape == "square":
        side = r * 0.85
        return [(x - side, y - side), (x + side, y - side), (x + side, y + side), (x - side, y + side)]
    return _polygon(shape, x, y, r)


def draw_placed(placed: list[PlacedShape], background: str, supersample: int = 4) -> Image.Image:
    big = SIZE * supersample
    image = Image.new("RGB", (big, big), COLOURS[background])
    draw = ImageDraw.Draw(image)
    for item in placed:
        x, y, r = item.x * supersample, item.y * supersample, item.radius * supersample
        fill = COLOURS[item.spec.colour]
        if item.spec.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif item.spec.shape == "square":
            side = r * 0.85
            draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
        else:
            draw.polygon(_polygon(item.spec.shape, x, y, r), fill=fill)
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def render(scene: Scene, rng: random.Random, supersample: int = 4) -> Image.Image:
    return draw_placed(place(scene, rng), scene.background, supersample)


# --- detector ---------------------------------------------------------------------------------------
def nearest_colour(rgb) -> str:
    rgb = np.asarray(rgb, dtype=float)
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name], dtype=float) - rgb) ** 2)))


@dataclass(frozen=True)
class Detection:
    background: str
    colour: str | None
    shape: str | None
    position: str | None
    object_fraction: float
    object_mask: np.ndarray
    box_fill: float = 0.0  # share of the object's bounding box it covers (0: no object)


def solidity(mask: np.ndarray) -> float:
    """Object area over the area of its convex hull (pixel corners): about 0.6 for a star, above 0.8 for
    the convex shapes."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return float(mask.sum() / ConvexHull(np.unique(corners, axis=0)).volume)


SQUARE_BOX_FILL = 0.86  # a convex object filling this much of its bounding box is a square whatever its corners


def corner_cover(mask: np.ndarray, share: float = 0.2) -> float:
    """How much of the emptiest corner of the object's bounding box it covers (corner patches a fifth of the box
    wide and high): a disc covers about an eighth of each, a square all of each, even one whose sides bow in."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    height, width = max(1, round((bottom - top) * share)), max(1, round((right - left) * share))
    patches = [mask[top:top + height, left:left + width], mask[top:top + height, right - width:right],
               mask[bottom - height:bottom, left:left + width], mask[bottom - height:bottom, right - width:right]]
    return float(min(patch.mean() for patch in patches))


def detect(image: Image.Image, threshold: float = 60.0) -> Detection:
    """Background = median colour of the border; object = pixels far from it; shape: a star is the one
    concave shape (low solidity), the convex ones differ in how much of their bounding box they fill, and a
    square fills its box's corners where a disc leaves them empty (so a square with bowed-in sides, which fills
    less of its box, is still a square); position from the centroid in a 3x3 grid."""
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=float)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                             pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(-1))
    mask = distance > threshold
    fraction = float(mask.mean())
    background = nearest_colour(background_rgb)
    if mask.sum() < 12:
        return Detection(background, None, None, None, fraction, mask)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    ys, xs = np.nonzero(mask)
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = mask.sum() / box_area
    if solidity(mask) < 0.75:
        shape = "star"
    elif fill >= SQUARE_BOX_FILL or (fill >= 0.65 and corner_cover(mask) >= 0.5):
        shape = "square"
    elif fill >= 0.65:
        shape = "circle"
    else:
        shape = "triangle"
    column = min(2, int(xs.mean() / SIZE * 3))
    row = min(2, int(ys.mean() / SIZE * 3))
    position = next(name for name, cell in POSITIONS.items() if cell == (column, row))
    return Detection(background, colour, shape, position, fraction, mask, float(fill))
