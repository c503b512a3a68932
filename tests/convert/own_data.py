"""The ten-line example of docs/convert.md ("Your own data") and the images it names, written where a test says."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from vcot.io import storage
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STREET = "s3://my-bucket/images/street.png"
IMAGES = {"photos/shop.png": (640, 480), "photos/desk.png": (400, 300), "photos/cat.png": (300, 300)}
STREET_SIZE = (800, 600)


def docs_example() -> list[str]:
    """The JSON lines of the first ```json block of the "Your own data" section, as the docs show them."""
    text = (REPO_ROOT / "docs" / "convert.md").read_text(encoding="utf-8")
    section = text.split("## Your own data", 1)[1]
    block = section.split("```json\n", 1)[1].split("\n```", 1)[0]
    return block.splitlines()


def png(size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, "gray")
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_own_data(root: str, street: str) -> str:
    """The example under ``root`` (images beside it), its absolute street image at ``street``; returns the file."""
    for path, size in IMAGES.items():
        storage.write_bytes(storage.join(root, path), png(size))
    storage.write_bytes(street, png(STREET_SIZE))
    lines = [line.replace(EXAMPLE_STREET, street) for line in docs_example()]
    assert all(isinstance(json.loads(line), dict) for line in lines)
    data = storage.join(root, "own-data.jsonl")
    storage.write_text(data, "\n".join(lines) + "\n")
    return data
