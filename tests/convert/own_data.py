"""The ten-line example of docs/convert.md ("Your own data") and the images it names, written where a test says."""

from __future__ import annotations

import io
import json
import struct
import zlib
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


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid all-black 1-bit PNG of ``width`` x ``height`` (400M pixels by default, over PIL's decompression-bomb
    limit), built row by row without ever holding the pixels: about 60 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


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
