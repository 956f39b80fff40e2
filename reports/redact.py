"""Redaction of the images a report shows, for reports forwarded beyond the review team.

A memorized sample is itself a copy of a training image, so redaction covers the samples as well
as their training neighbours: with ``blur`` or ``omit`` no training pixels reach the page.
"""

from __future__ import annotations

import base64
import io
import re

REDACTIONS = ("none", "blur", "omit")
MAX_THUMBNAIL_PIXELS = 4096 * 4096  # a thumbnail claiming more is a decompression bomb, not a sample
PNG_URI = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/=]+$")
_BLUR_SIZE = 96  # thumbnails are blurred at this size, so tiny images blur as much as large ones


def safe_png(uri) -> str:
    """The URI when it is an inline PNG, else "": a crafted audit.json cannot make the page fetch."""
    return uri if isinstance(uri, str) and PNG_URI.match(uri) else ""


def _blur(uri: str, where: str) -> str:
    from PIL import Image, ImageFilter

    from memaudit.errors import InputError

    try:
        raw = base64.b64decode(uri.partition(",")[2], validate=True)
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            # the header's size is read before any pixel: refuse a bomb before decoding it
            if image.width * image.height > MAX_THUMBNAIL_PIXELS:
                raise InputError(f"{where}: a {image.width}x{image.height} PNG is no thumbnail memaudit writes "
                                 f"(at most {MAX_THUMBNAIL_PIXELS} pixels); refusing to decode it for --redact blur")
            image = image.convert("RGB").resize((_BLUR_SIZE, _BLUR_SIZE), Image.Resampling.NEAREST)
    except InputError:
        raise
    except Exception as error:  # binascii.Error, PIL's UnidentifiedImageError, a truncated stream...
        raise InputError(f"{where}: not a readable PNG ({type(error).__name__}); --redact blur needs the "
                         "thumbnails memaudit writes (use --redact omit to leave images out)") from None
    blurred = image.filter(ImageFilter.GaussianBlur(radius=_BLUR_SIZE / 8))
    buffer = io.BytesIO()
    blurred.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def redact_image(uri, mode: str, where: str = "an image") -> str:
    """The image to embed under redaction ``mode``: unchanged, blurred, or "" (omitted).
    ``where`` names the image in audit.json for the error of one that cannot be blurred."""
    uri = safe_png(uri)
    if not uri or mode == "omit":
        return ""
    return _blur(uri, where) if mode == "blur" else uri
