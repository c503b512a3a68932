"""vcot.io.images: RGB images from local paths and S3."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from vcot.errors import StorageError
from vcot.io import storage
from vcot.io.images import load_rgb


def _png(mode: str, size: tuple[int, int], color: int | tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "color"), [("L", 128), ("RGBA", (10, 20, 30, 40)), ("P", 3), ("RGB", (1, 2, 3))])
def test_any_mode_comes_back_rgb(tmp_path: Path, mode: str, color: int | tuple[int, ...]) -> None:
    path = tmp_path / f"{mode}.png"
    path.write_bytes(_png(mode, (7, 5), color))
    image = load_rgb(str(path))
    assert image.mode == "RGB" and image.size == (7, 5)
    if mode == "L":
        assert image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    ("mode", "color", "seen"),
    [
        ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # a transparent background is white, as transformers loads it
        ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
        ("LA", (0, 128), (127, 127, 127)),  # half-transparent black over white
    ],
)
def test_transparency_comes_back_as_the_serving_loaders_lay_it(
    tmp_path: Path, mode: str, color: int | tuple[int, ...], seen: tuple[int, int, int]
) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(_png(mode, (3, 2), color))
    assert load_rgb(str(path)).getpixel((0, 0)) == seen


def test_reads_from_s3(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/images/a.png"
    storage.write_bytes(uri, _png("RGB", (4, 9), (200, 100, 50)))
    image = load_rgb(uri)
    assert image.size == (4, 9) and image.getpixel((3, 8)) == (200, 100, 50)


def test_missing_or_broken_images_raise(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        load_rgb(str(tmp_path / "missing.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UnidentifiedImageError):
        load_rgb(str(tmp_path / "broken.png"))


def test_a_photo_stored_turned_loads_upright(tmp_path: Path) -> None:
    """EXIF orientation 6 (turn 90 degrees clockwise to display): the stored left column is the displayed top row,
    as transformers' load_image and vLLM show it to the model."""
    stored = Image.new("RGB", (40, 30), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 4, 30))  # a red stripe down the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif.tobytes())
    (tmp_path / "turned.png").write_bytes(buffer.getvalue())
    image = load_rgb(str(tmp_path / "turned.png"))
    assert image.size == (30, 40)
    assert image.getpixel((15, 1)) == (255, 0, 0) and image.getpixel((15, 38)) == (128, 128, 128)
