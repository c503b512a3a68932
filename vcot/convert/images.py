"""Image sizes from headers (no pixel decoding) and content-addressed storage of embedded images."""

from __future__ import annotations

import hashlib
import io

from vcot.errors import MissingError
from vcot.io import storage
from vcot.io.images import TOO_LARGE, displayed_size, orientation, too_large


class ImageProblem(Exception):
    """An image that cannot be used; ``reason`` is the rejection code (``missing_image``, ``unreadable_image``,
    ``image_too_large``: more pixels than PIL decodes, :func:`vcot.io.images.too_large`).

    Storage that cannot be reached is not an image problem: that :class:`StorageError` propagates.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def size_from_bytes(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes as displayed (EXIF orientation applied, as every stage loads it:
    :func:`vcot.io.images.upright`), read from the header only.

    >>> from PIL import Image
    >>> buffer = io.BytesIO(); Image.new("RGB", (7, 3)).save(buffer, "PNG")
    >>> size_from_bytes(buffer.getvalue())
    (7, 3)
    """
    width, height, _ = header_from_bytes(data)
    return width, height


def header_from_bytes(data: bytes) -> tuple[int, int, int]:
    """:func:`size_from_bytes` and the EXIF orientation it applied (1: stored upright)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header, decodes no pixels
            (width, height), turned = displayed_size(image), orientation(image)
    except Image.DecompressionBombError as exc:  # an Exception, not an OSError: it would stop the stage
        raise ImageProblem(TOO_LARGE, str(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageProblem("unreadable_image", f"not a readable image: {exc}") from exc
    return (*checked_size(width, height, "image"), turned)


def size_from_uri(uri: str) -> tuple[int, int]:
    """``(width, height)`` of the image at ``uri`` as displayed, reading only its first bytes where the format
    allows."""
    width, height, _ = header_from_uri(uri)
    return width, height


def header_from_uri(uri: str) -> tuple[int, int, int]:
    """:func:`size_from_uri` and the EXIF orientation it applied (1: stored upright)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with storage.open_uri(uri, "rb") as handle, Image.open(handle) as image:
            # PIL has read the header through the stream; no pixel decoded
            (width, height), turned = displayed_size(image), orientation(image)
    except MissingError as exc:  # unreachable storage or refused credentials stop the stage instead
        raise ImageProblem("missing_image", str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise ImageProblem(TOO_LARGE, f"{uri}: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageProblem("unreadable_image", f"{uri} is not a readable image: {exc}") from exc
    return (*checked_size(width, height, uri), turned)


def checked_size(width: int, height: int, what: str, limit: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of a usable image; an :class:`ImageProblem` for an empty one or one too large to decode
    (a header PIL opened with only a warning, or a size from metadata: ``limit`` as in :func:`too_large`).

    >>> checked_size(20_000, 20_000, "big.png")
    Traceback (most recent call last):
    ...
    vcot.convert.images.ImageProblem: big.png: image is 20000x20000 = 400,000,000 pixels, more than the 178,956,970 PIL decodes (a decompression-bomb guard)
    """
    if width <= 0 or height <= 0:
        raise ImageProblem("unreadable_image", f"{what}: image header gives size {width}x{height}")
    problem = too_large(width, height, limit)
    if problem is not None:
        raise ImageProblem(TOO_LARGE, f"{what}: {problem}")
    return width, height


def image_format(data: bytes) -> str:
    """File extension for encoded image bytes, from their magic number (``bin`` when unknown)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def store_content_addressed(data: bytes, root: str) -> str:
    """Write image bytes once under ``root/<sha[:2]>/<sha256>.<ext>`` and return the URI.

    The same image embedded many times (or converted by a rerun) is stored once, under a name that
    cannot collide with a different image.
    """
    digest = hashlib.sha256(data).hexdigest()
    uri = storage.join(root, digest[:2], f"{digest}.{image_format(data)}")
    if not storage.exists(uri):
        storage.write_bytes(uri, data)
    return uri
