"""Self-contained HTML pieces shared by the pages vcot writes (evaluate's report, ``vcot-preview``).

An image is inlined as a small JPEG (``data:`` URI) and its boxes are an SVG overlay in house coordinates
(viewBox 0-1000 stretched over the image), so boxes stay exact at any thumbnail size and the page needs no
other file: readable offline, from S3, or attached to an issue.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence

from vcot.io.images import load_rgb
from vcot.log import get_logger

log = get_logger(__name__)

THUMBNAIL_SIDE = 320


def thumbnail_data_uri(image_uri: str, side: int = THUMBNAIL_SIDE) -> str | None:
    """The image as a small inlined JPEG (``data:`` URI), or ``None`` when it cannot be read."""
    try:
        image = load_rgb(image_uri)
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    except Exception as exc:  # noqa: BLE001 - a missing image must not sink the page
        log.warning("thumbnail_unavailable", image=image_uri, error=str(exc))
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def box_rects(boxes: Sequence[Sequence[int]], css_class: str, color: str, *, dashed: bool = False) -> str:
    """SVG rectangles for house boxes, for an overlay whose viewBox is 0-1000 on both axes.

    >>> box_rects([(1, 2, 11, 22)], "gt", "#0b0")[:60]
    '<rect class="gt" x="1" y="2" width="10" height="20" fill="no'
    """
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return "".join(
        f'<rect class="{css_class}" x="{x1}" y="{y1}" width="{x2 - x1}" height="{y2 - y1}" fill="none" '
        f'stroke="{color}" stroke-width="2"{dash} vector-effect="non-scaling-stroke"/>'
        for x1, y1, x2, y2 in boxes
    )


def highlight_tags(text: str) -> str:
    """Escape ``text`` and colour its ``<ref>`` and ``<box>`` tags.

    >>> highlight_tags("<ref>a</ref>")
    '<span class="tag-ref">&lt;ref&gt;a&lt;/ref&gt;</span>'
    """
    escaped = html.escape(text)
    escaped = re.sub(
        r"&lt;box&gt;(.*?)&lt;/box&gt;", r'<span class="tag-box">&lt;box&gt;\1&lt;/box&gt;</span>', escaped
    )
    return re.sub(r"&lt;ref&gt;(.*?)&lt;/ref&gt;", r'<span class="tag-ref">&lt;ref&gt;\1&lt;/ref&gt;</span>', escaped)
