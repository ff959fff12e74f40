"""Face images for tests and benchmarks, made from pictures that ship inside installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper): nothing is stored in the repository."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

from PIL import Image


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@functools.cache
def astronaut_image() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@functools.cache
def astronaut_jpeg(target_bytes: int = 100_000, side: int = 768) -> bytes:
    """The astronaut upscaled to `side` px, JPEG quality chosen to come closest to the size."""
    image = astronaut_image().resize((side, side), Image.Resampling.BICUBIC)
    low, high = 20, 97  # size grows with quality: bisect to the last one under the target
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(_jpeg(image, middle)) <= target_bytes else (low, middle)
    return min(_jpeg(image, low), _jpeg(image, high), key=lambda d: abs(len(d) - target_bytes))


@functools.cache
def grace_hopper_jpeg() -> bytes:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path.read_bytes()


@functools.cache
def small_png(side: int = 64) -> bytes:
    out = io.BytesIO()
    astronaut_image().resize((side, side)).save(out, "PNG")
    return out.getvalue()


def verify_request(probe: bytes, references: dict[str, bytes], **extra: object) -> dict:
    """A `POST /` body (docs/api.md §1) for these images."""
    refs = [{"id": ref_id, "image": b64(image)} for ref_id, image in references.items()]
    return {"probe": b64(probe), "references": refs, **extra}
