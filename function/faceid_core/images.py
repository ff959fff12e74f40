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
from typing import Literal

from PIL import Image, ImageOps

from .errors import bad_request, invalid_image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A PNG's last chunk, always these 12 bytes (length 0, type, CRC). The decoder stops once it has
#: every row, so a PNG cut after its pixel data would otherwise decode as if complete.
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
VERIFIED_CACHE_SIZE = 64
#: Pixels one image may have, by default: a 16 MP photo (the function's MAX_IMAGE_PIXELS; the
#: connector reads its snapshots under the same bound).
MAX_IMAGE_PIXELS = 16_000_000

ImageFormat = Literal["jpeg", "png"]

# SHA-256 of a verified reference's base64 -> (format, width, height): keeps no image.
_verified: OrderedDict[bytes, tuple[ImageFormat, int, int]] = OrderedDict()
_verified_lock = threading.Lock()


@dataclass(frozen=True)
class EncodedImage:
    """An image as received: the raw bytes, its canonical base64 text and its header facts."""

    data: bytes
    b64: str
    format: ImageFormat
    width: int  # as seen, EXIF orientation applied
    height: int


def sniff_format(data: bytes) -> ImageFormat | None:
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def decode_base64(text: object, field: str) -> tuple[bytes, str]:
    """Strict base64 (a `data:` prefix is tolerated): the bytes and the bare base64 text, which
    is canonical enough to forward as is. Anything else is a bad_request naming the field."""
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


#: A JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT scaling), so its header may announce up to this
#: many times MAX_IMAGE_PIXELS (and at most Pillow's own bomb bound, Image.MAX_IMAGE_PIXELS,
#: about 89 MP): no decode of it ever holds more than MAX_IMAGE_PIXELS pixels.
JPEG_DRAFT_PIXELS = 64
DRAFT_DIVISORS = (8, 4, 2, 1)
ORIENTATION_TAG = 0x0112
#: EXIF orientations that turn the picture a quarter: width and height swap.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
WHITE = (255, 255, 255)


def open_checked(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Open lazily and refuse anything that is not a JPEG/PNG of sane size (PNG bombs included)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise invalid_image(f"'{field}' is not a JPEG or PNG image")
    if fmt == "png" and not data.endswith(PNG_END):
        raise invalid_image(f"'{field}' is a truncated PNG image (it does not end with IEND)")
    limit = max_pixels
    if fmt == "jpeg":
        limit = min(max_pixels * JPEG_DRAFT_PIXELS, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise invalid_image(f"'{field}' has more than the {limit} pixels accepted") from None
    except Exception:
        raise invalid_image(f"'{field}' could not be read as a {fmt.upper()} image") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > limit:
        raise invalid_image(f"'{field}' is {width}x{height} pixels; at most {limit} are accepted")
    return image


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as the picture is meant to be seen (its EXIF orientation applied)."""
    width, height = image.size
    try:
        turned = image.getexif().get(ORIENTATION_TAG) in QUARTER_TURNS
    except Exception:  # an unreadable EXIF block orients nothing, as in every viewer
        turned = False
    return (height, width) if turned else (width, height)


def _divisor(image: Image.Image, side: int, max_pixels: int) -> int:
    """The JPEG scale (1/d) to decode at: the smallest picture still at least `side` long, and
    never more than max_pixels."""
    width, height = image.size
    for d in DRAFT_DIVISORS:
        if -(-max(width, height) // d) >= side or d == 1:
            break
    while d < DRAFT_DIVISORS[0] and -(-width // d) * -(-height // d) > max_pixels:
        d *= 2
    return d


def _as_rgb(image: Image.Image) -> Image.Image:
    """Any JPEG/PNG mode to 8-bit RGB: 16-bit grey scaled (not clipped), transparency on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode == "P" or image.mode.endswith(("A", "a")):
        image = image.convert("RGBA")
        flat = Image.new("RGB", image.size, WHITE)
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    return image.convert("RGB")


def decode_rgb(
    data: bytes, side: int, max_pixels: int, field: str = "image", *, shrink: bool = True
) -> Image.Image:
    """The picture as seen (EXIF orientation applied) in RGB, its long side at most `side`; with
    `shrink=False`, the cheapest decode still at least `side` long (no resampling at all).

    A large JPEG decodes straight at a reduced scale (a 48 MP photo at 1/4 or 1/8), so memory
    stays bounded by max_pixels whatever its header announces."""
    image = open_checked(data, field, max_pixels)
    try:
        if image.format == "JPEG":
            d = _divisor(image, side, max_pixels)
            if d > 1:
                image.draft("RGB", (max(1, image.width // d), max(1, image.height // d)))
        image.load()
        image = _as_rgb(ImageOps.exif_transpose(image))
        if shrink and max(image.size) > side:
            image.thumbnail((side, side), Image.Resampling.BILINEAR)
    except Exception:
        raise invalid_image(f"'{field}' is damaged or truncated and cannot be decoded") from None
    return image


def check_pixels(image: EncodedImage, field: str, max_pixels: int) -> None:
    """Prove the whole image decodes, at low cost; invalid_image when it does not."""
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
    width, height = oriented_size(open_checked(data, field, max_pixels))
    fmt = sniff_format(data)
    assert fmt is not None  # open_checked refuses anything but a JPEG or PNG
    image = EncodedImage(data, b64, fmt, width, height)
    if pixels:
        check_pixels(image, field, max_pixels)
    if digest is not None and pixels:
        with _verified_lock:
            _verified[digest] = (image.format, width, height)
            while len(_verified) > VERIFIED_CACHE_SIZE:
                _verified.popitem(last=False)
    return image
