"""Redaction of the images a report shows, for reports forwarded beyond the review team.

A memorized sample is itself a copy of a training image, so redaction covers the samples as well
as their training neighbours: with ``blur`` or ``omit`` no training pixels reach the page.
"""

from __future__ import annotations

import base64
import io
import re

REDACTIONS = ("none", "blur", "omit")
PNG_URI = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/=]+$")
_BLUR_SIZE = 96  # thumbnails are blurred at this size, so tiny images blur as much as large ones


def safe_png(uri) -> str:
    """The URI when it is an inline PNG, else "": a crafted audit.json cannot make the page fetch."""
    return uri if isinstance(uri, str) and PNG_URI.match(uri) else ""


def _blur(uri: str) -> str:
    from PIL import Image, ImageFilter

    raw = base64.b64decode(uri.partition(",")[2])
    with Image.open(io.BytesIO(raw)) as image:
        image = image.convert("RGB").resize((_BLUR_SIZE, _BLUR_SIZE), Image.Resampling.NEAREST)
    blurred = image.filter(ImageFilter.GaussianBlur(radius=_BLUR_SIZE / 8))
    buffer = io.BytesIO()
    blurred.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def redact_image(uri, mode: str) -> str:
    """The image to embed under redaction ``mode``: unchanged, blurred, or "" (omitted)."""
    uri = safe_png(uri)
    if not uri or mode == "omit":
        return ""
    return _blur(uri) if mode == "blur" else uri
