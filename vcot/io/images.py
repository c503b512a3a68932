"""Images by URI: the one loader for every stage that hands pixels to a model (evaluate, train), and the one
size rule every stage applies before it (:func:`too_large`)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from vcot.errors import storage_outage
from vcot.io import storage

if TYPE_CHECKING:
    from PIL import Image

TOO_LARGE = "image_too_large"
"""The rejection reason (convert) and skip reason (tokenize) of an image PIL refuses to decode."""


def decodable_pixels() -> int | None:
    """The most pixels PIL decodes: ``Image.open`` refuses more than twice ``Image.MAX_IMAGE_PIXELS`` (178,956,970 by
    default) as a decompression bomb, and only warns below; ``None`` when that limit is off."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def too_large(width: int, height: int, limit: int | None = None) -> str | None:
    """Why an image of ``width`` x ``height`` can never be loaded (PIL's decompression-bomb limit), else ``None``.

    ``limit``: :func:`decodable_pixels`, passed by callers that check every record.

    >>> too_large(20_000, 20_000)
    'image is 20000x20000 = 400,000,000 pixels, more than the 178,956,970 PIL decodes (a decompression-bomb guard)'
    >>> too_large(4000, 3000) is None
    True
    """
    limit = decodable_pixels() if limit is None else limit
    if limit is None or width * height <= limit:
        return None
    return (
        f"image is {width}x{height} = {width * height:,} pixels, more than the {limit:,} PIL decodes "
        "(a decompression-bomb guard)"
    )


def load_rgb(uri: str | Image.Image) -> Image.Image:
    """The image at ``uri`` (local path or ``s3://``) decoded as RGB; an image already decoded, as RGB.

    Whole-object read then decode: S3 streams are not seekable, and PIL needs to seek. Palette, grey and
    RGBA images come back as RGB, as the Qwen image processor expects (:func:`to_rgb`). (The lmms-eval plugin hands
    in the images its tasks decoded.) An image over PIL's limit (:func:`too_large`) raises
    ``Image.DecompressionBombError``.
    """
    from PIL import Image

    if isinstance(uri, Image.Image):
        return to_rgb(uri)
    with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
        return to_rgb(upright(image))


def load_rgb_or_error(uri: str) -> tuple[Image.Image | None, Exception | None]:
    """:func:`load_rgb`, or ``None`` and why the image cannot be used (missing, not an image, too large): for a loop
    that skips a bad image's record. Storage that cannot be reached raises instead, or every record would be
    skipped as bad."""
    try:
        return load_rgb(uri), None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for one broken image
        if storage_outage(exc):
            raise
        return None, exc


def upright(image: Image.Image) -> Image.Image:
    """``image`` as it is displayed: its EXIF orientation (a phone's portrait photo is stored sideways) applied, as
    transformers' ``load_image`` and vLLM apply it when they serve the model, so that training sees what serving
    sees. Record sizes and boxes are in this orientation (:func:`displayed_size`).

    >>> from PIL import Image
    >>> sideways = Image.new("RGB", (4, 2)); sideways.getexif()[ORIENTATION] = 6
    >>> upright(sideways).size
    (2, 4)
    """
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image


ORIENTATION = 0x0112
"""The EXIF tag of an image's orientation: 1 as stored, 2-8 flipped or turned (5-8 swap width and height)."""


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``image`` as displayed (:func:`upright`), read from its header: no pixel decoded.

    >>> from PIL import Image
    >>> sideways = Image.new("RGB", (4, 2)); sideways.getexif()[ORIENTATION] = 8
    >>> displayed_size(sideways), displayed_size(Image.new("RGB", (4, 2)))
    ((2, 4), (4, 2))
    """
    width, height = image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


def orientation(image: Image.Image) -> int:
    """``image``'s EXIF orientation from what its header held: 1 (as stored) without one. A PNG whose EXIF chunk
    comes after its pixels counts as 1: reading it would decode the image, and sizes are read from headers alone."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels as stored, as vLLM then serves them
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1  # what PIL's exif_transpose acts on


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB, transparency laid on white: as the Qwen image processors' ``convert_to_rgb``, vLLM and
    qwen-vl-utils do when the model is served (PIL's own ``convert`` drops the alpha: a transparent background turns
    black). Other modes as PIL converts them, as those loaders do too (16-bit grey is clipped, not scaled).

    >>> from PIL import Image
    >>> to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")
