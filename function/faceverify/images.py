"""Checked image input: strict base64, JPEG/PNG only, size bounded before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from .errors import bad_request, invalid_image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A PNG's last chunk, always these 12 bytes (length 0, type, CRC). The decoder stops once it has
#: every row, so a PNG cut after its pixel data would otherwise decode as if complete.
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
VERIFIED_CACHE_SIZE = 64

# SHA-256 of a verified reference's base64 -> (format, width, height): keeps no image.
_verified: OrderedDict[bytes, tuple[str, int, int]] = OrderedDict()
_verified_lock = threading.Lock()


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


def decode_base64(text: object, field: str) -> tuple[bytes, str]:
    """Strict base64 (a `data:` prefix is tolerated): the bytes and the bare base64 text, which
    is canonical enough to forward as is. Anything else is a 400 naming the field."""
    if not isinstance(text, str) or not text:
        raise bad_request(f"'{field}' must be a non-empty base64 string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
        if not text:
            raise bad_request(f"'{field}' has a data: prefix but no base64 after it")
    # b64decode(validate=True) also takes padding after a complete quantum ("QUJD=", "QUJD===="),
    # which RFC 4648 refuses; and this very text is what MXFace gets.
    if len(text) % 4 or text.endswith("==="):
        raise bad_request(f"'{field}' is not valid base64")
    try:
        return base64.b64decode(text, validate=True), text
    except (binascii.Error, ValueError):
        raise bad_request(f"'{field}' is not valid base64") from None


def open_checked(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Open lazily and refuse anything that is not a JPEG/PNG of sane size (PNG bombs included)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise invalid_image(f"'{field}' is not a JPEG or PNG image")
    if fmt == "png" and not data.endswith(PNG_END):
        raise invalid_image(f"'{field}' is a truncated PNG image (it does not end with IEND)")
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


def check_pixels(image: EncodedImage, field: str, max_pixels: int) -> None:
    """Prove the whole image decodes, at low cost; 422 invalid_image when it does not."""
    opened = open_checked(image.data, field, max_pixels)
    try:
        # JPEG draft mode decodes at 1/8 scale: it still walks the whole stream, so a
        # truncated or corrupt file fails here without paying for a full-size decode.
        opened.draft("L", (max(1, opened.width // 8), max(1, opened.height // 8)))
        opened.load()
    except Exception:
        raise invalid_image(f"'{field}' is damaged or truncated and cannot be decoded") from None


def parse_image(
    text: object, field: str, max_pixels: int, *, remember: bool = False, pixels: bool = True
) -> EncodedImage:
    """Decode and check one base64 image field: format and size always, pixels unless
    `pixels=False` (the caller then runs check_pixels itself, e.g. while the engine works).

    `remember=True` (references: the same few arrive with every request, and decoding them is
    much of a request's CPU) skips the pixel check when this exact text passed it before."""
    data, b64 = decode_base64(text, field)
    digest = None
    if remember:
        digest = hashlib.sha256(b64.encode("ascii")).digest()
        with _verified_lock:
            facts = _verified.get(digest)
            if facts is not None:
                _verified.move_to_end(digest)
        if facts is not None and facts[1] * facts[2] <= max_pixels:
            return EncodedImage(data, b64, *facts)
    width, height = open_checked(data, field, max_pixels).size
    image = EncodedImage(data, b64, sniff_format(data) or "", width, height)
    if pixels:
        check_pixels(image, field, max_pixels)
    if digest is not None and pixels:
        with _verified_lock:
            _verified[digest] = (image.format, width, height)
            while len(_verified) > VERIFIED_CACHE_SIZE:
                _verified.popitem(last=False)
    return image


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
