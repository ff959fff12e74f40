"""Image preparation in memory: a small probe for the comparison function, and a face crop to keep
as a reference. Decoding goes through faceid_core's checked reader (bounded pixels); a snapshot
that cannot be read is `snapshot_unavailable`.

The probe's long side is 960 px: half of a full-HD camera frame, which libjpeg decodes straight at
that size (DCT scaling) with no resampling. That takes about a third of the time of a resize to
1024 px, the largest part of the connector's own share of a login."""

from __future__ import annotations

import io
from collections.abc import Sequence

from faceid_core.errors import DeviceError, InputError, no_face
from faceid_core.images import MAX_IMAGE_PIXELS, decode_rgb
from PIL import Image

PROBE_MAX_SIDE = 960


def _decode(jpeg: bytes, max_side: int) -> Image.Image:
    """A picture the device sent that cannot be read is the device's failure, not the face's."""
    try:
        return decode_rgb(jpeg, max_side, MAX_IMAGE_PIXELS, field="snapshot")
    except InputError as exc:  # invalid_image
        raise DeviceError("snapshot_unavailable", exc.message) from None


def _encode(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def downscale_jpeg(jpeg: bytes, max_side: int = PROBE_MAX_SIDE, quality: int = 85) -> bytes:
    """The probe: a JPEG or PNG as seen (orientation applied, transparency on white), long side
    at most max_side. A camera frame 2, 4 or 8 times larger decodes straight to that size."""
    return _encode(_decode(jpeg, max_side), quality)


def crop_face(jpeg: bytes, box: Sequence[float], margin: float = 0.4, max_side: int = 512) -> bytes:
    """The face `box` (x, y, w, h in this image's pixels) widened by `margin` of its size on
    every side, clipped to the picture, long side at most max_side."""
    image = _decode(jpeg, MAX_IMAGE_PIXELS)
    x, y, w, h = (float(v) for v in box)
    left, top = max(0.0, x - w * margin), max(0.0, y - h * margin)
    right = min(float(image.width), x + w * (1 + margin))
    bottom = min(float(image.height), y + h * (1 + margin))
    if w <= 0 or h <= 0 or right - left < 1 or bottom - top < 1:
        raise no_face("The face box lies outside the picture")
    face = image.crop((round(left), round(top), round(right), round(bottom)))
    face.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return _encode(face, 90)
