"""Images by URI: the one loader for every stage that hands pixels to a model (evaluate, train)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from vcot.io import storage
if TYPE_CHECKING:
    from PIL import Image


def load_rgb(uri: str | Image.Image) -> Image.Image:
    """The image at ``uri`` (local path or ``s3://``) decoded as RGB; an image already decoded, as RGB.

    Whole-object read then decode: S3 streams are not seekable, and PIL needs to seek. Palette, grey and
    RGBA images come back as RGB, as the Qwen image processor expects. (The lmms-eval plugin hands in the
    images its tasks decoded.)
    """
    from PIL import Image

    if isinstance(uri, Image.Image):
        return uri.convert("RGB")
    with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
        return image.convert("RGB")
