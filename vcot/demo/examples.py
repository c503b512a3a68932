"""A few example images drawn in code (no files to ship or download): coloured shapes at known places, like the
synthetic data ``make local-train`` trains the tiny model on, with a question each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class Shape:
    kind: str  # circle, square or bar
    rgb: tuple[int, int, int]
    pixels: tuple[int, int, int, int]  # x1, y1, x2, y2 of the image


@dataclass(frozen=True)
class Example:
    name: str
    size: tuple[int, int]
    shapes: tuple[Shape, ...]
    question: str


EXAMPLES = (
    Example("circle", (240, 160), (Shape("circle", (220, 40, 40), (30, 40, 110, 120)),
                                   Shape("square", (40, 80, 220), (150, 30, 210, 90))), "What color is the circle?"),
    Example("bar", (180, 240), (Shape("bar", (40, 170, 60), (20, 170, 160, 200)),
                                Shape("circle", (230, 210, 40), (60, 40, 130, 110))), "What color is the bar?"),
    Example("square", (256, 192), (Shape("square", (140, 60, 180), (150, 90, 230, 170)),), "What color is the square?"),
)


def draw(example: Example) -> Image.Image:
    """The example's image."""
    image = Image.new("RGB", example.size, BACKGROUND)
    canvas = ImageDraw.Draw(image)
    for shape in example.shapes:
        x1, y1, x2, y2 = shape.pixels
        if shape.kind == "circle":
            canvas.ellipse((x1, y1, x2 - 1, y2 - 1), fill=shape.rgb)
        else:
            canvas.rectangle((x1, y1, x2 - 1, y2 - 1), fill=shape.rgb)
    return image


def write_examples(folder: Path) -> list[tuple[str, str]]:
    """Save every example as a PNG in ``folder``; returns ``(path, question)`` pairs for the page."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for example in EXAMPLES:
        path = folder / f"{example.name}.png"
        draw(example).save(path)
        pairs.append((str(path), example.question))
    return pairs
