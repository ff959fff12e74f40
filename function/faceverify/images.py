"""Checked image input: strict base64, JPEG/PNG only, dimensions bounded before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import bad_request, invalid_image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class EncodedImage:
    """An image as received: the raw bytes, its canonical base64 text and its header facts."""

    data: bytes
    b64: str
    format: str  # "jpeg" | "png"
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def decode_base64(text: object, field: str) -> bytes:
    """Strict base64 (a `data:` prefix is tolerated); anything else is a 400 naming the field."""
    if not isinstance(text, str) or not text:
        raise bad_request(f"'{field}' must be a non-empty base64 string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"'{field}' is not valid base64") from None


def open_checked(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Open lazily and refuse anything that is not a JPEG/PNG of sane size (PNG bombs included)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise invalid_image(f"'{field}' is not a JPEG or PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
    except Exception:
        raise invalid_image(f"'{field}' could not be read as a {fmt.upper()} image") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise invalid_image(
            f"'{field}' is {width}x{height} pixels; at most {max_pixels} pixels are accepted"
        )
    return image


def parse_image(text: object, field: str, max_pixels: int) -> EncodedImage:
    """Decode and check one base64 image field; pixels are verified as decodable at low cost."""
    data = decode_base64(text, field)
    image = open_checked(data, field, max_pixels)
    width, height = image.size
    try:
        # JPEG draft mode decodes at 1/8 scale: it still walks the whole stream, so a
        # truncated or corrupt file fails here without paying for a full-size decode.
        image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception:
        raise invalid_image(f"'{field}' is damaged or truncated and cannot be decoded") from None
    fmt = sniff_format(data) or ""
    canonical = base64.b64encode(data).decode("ascii")
    return EncodedImage(data, canonical, fmt, width, height)


def to_rgb(data: bytes, max_side: int, max_pixels: int, field: str = "image") -> Image.Image:
    """Full decode to RGB, downscaled so the long side is at most max_side (cheap for JPEG)."""
    image = open_checked(data, field, max_pixels)
    try:
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            image.draft("RGB", (int(image.width * scale) + 1, int(image.height * scale) + 1))
        image = image.convert("RGB")
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    except Exception:
        raise invalid_image(f"'{field}' is damaged or truncated and cannot be decoded") from None
    return image
