"""Face images for tests and benchmarks, made from pictures that ship inside installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper): nothing is stored in the repository."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Literal

from PIL import Image, ImageEnhance

Person = Literal["grace", "astronaut"]
#: Each sample person's face box (x, y, width) in the picture's own pixels, as the local engine's
#: detector (YuNet) boxes it.
FACE_BOXES: dict[Person, tuple[int, int, int]] = {
    "grace": (182, 119, 171),
    "astronaut": (178, 62, 91),
}
CAMERA_FRAME = (1920, 1080)


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


def person_picture(person: Person) -> Image.Image:
    if person == "grace":
        return Image.open(io.BytesIO(grace_hopper_jpeg())).convert("RGB")
    return astronaut_image()


def portrait(person: Person, face_px: int) -> Image.Image:
    """Head and shoulders only (the rest of the picture would hide anyone else in the frame),
    scaled so the face box is `face_px` wide."""
    x, y, width = FACE_BOXES[person]
    picture = person_picture(person)
    box = (
        max(0, x - width),
        max(0, y - width),
        min(picture.width, x + 2 * width),
        min(picture.height, y + 5 * width // 2),
    )
    factor = face_px / width
    size = (round((box[2] - box[0]) * factor), round((box[3] - box[1]) * factor))
    return picture.crop(box).resize(size, Image.Resampling.BICUBIC)


def person_in_front(
    front: Person, behind: Person, behind_share: float, front_px: int = 480
) -> Image.Image:
    """A 1920x1080 camera frame: `front` close to the camera, face `front_px` wide, and `behind`
    further back on the other side, face `behind_share` of that width.

    With the default `front_px`, a share of 0.3 or more keeps the face behind (144 px or more)
    well within reach of the local detector, which then finds both; a much smaller face would
    go unseen, and a test of who may match would prove nothing."""
    canvas = Image.new("RGB", CAMERA_FRAME, (96, 104, 112))
    for person, face_px, centre in (
        (front, front_px, (640, 560)),
        (behind, round(front_px * behind_share), (1500, 420)),
    ):
        x, y, width = FACE_BOXES[person]
        factor = face_px / width
        left = round(centre[0] - (min(x, width) + width / 2) * factor)
        top = round(centre[1] - (min(y, width) + width / 2) * factor)
        canvas.paste(portrait(person, face_px), (left, top))
    return canvas


def face_in_shadow(
    person: Person = "grace", face_px: int = 300, light: float = 0.12
) -> Image.Image:
    """A lit camera frame in which `person`'s face is in deep shadow: the detector still boxes
    it, but the face itself is too dark to judge (the kind of photo enrollment must refuse,
    since a stored one would fail every verify)."""
    canvas = Image.new("RGB", CAMERA_FRAME, (150, 160, 170))
    canvas.paste(ImageEnhance.Brightness(portrait(person, face_px)).enhance(light), (700, 200))
    return canvas


def verify_request(probe: bytes, references: dict[str, bytes], **extra: object) -> dict:
    """A `POST /` body (docs/api.md §1) for these images."""
    refs = [{"id": ref_id, "image": b64(image)} for ref_id, image in references.items()]
    return {"probe": b64(probe), "references": refs, **extra}
