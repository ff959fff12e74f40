"""Camera-like frames made at run time from pictures that ship inside installed packages
(matplotlib's Grace Hopper, scikit-image's astronaut and coffee): nothing is committed."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

FRAME = (1920, 1080)
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
#: Head and shoulders of scikit-image's astronaut: her face as large in the frame as Grace's.
ASTRONAUT_HEAD = (70, 0, 370, 300)
#: Grace Hopper's face in the 960x540 probe the connector makes of camera_snapshot(): where a fake
#: MXFace finds it, so that the stored reference is a crop of the size a real enrollment keeps.
GRACE_FACE_BOX = (400, 105, 165, 190)


def _grace_hopper() -> Image.Image:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(path).convert("RGB")


def _skimage(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def camera_frame(picture: Image.Image, height: int = 900) -> Image.Image:
    """The picture scaled to `height` and centred on a grey 1920x1080 frame, like a room camera."""
    scale = height / picture.height
    scaled = picture.resize((int(picture.width * scale), height), Image.Resampling.BICUBIC)
    frame = Image.new("RGB", FRAME, (92, 96, 100))
    frame.paste(scaled, ((FRAME[0] - scaled.width) // 2, (FRAME[1] - scaled.height) // 2))
    return frame


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def camera_snapshot(noise_sigma: float = 6.0) -> bytes:
    """Grace Hopper in a 1920x1080 frame with sensor-like noise, so it compresses like a camera
    picture: a clean synthetic frame would flatter the bytes sent and the decoding time, both of
    which grow with the snapshot's size."""
    frame = np.asarray(camera_frame(_grace_hopper()), dtype=np.int16)
    noise = np.random.default_rng(7).normal(0, noise_sigma, frame.shape).astype(np.int16)
    return jpeg_bytes(Image.fromarray(np.clip(frame + noise, 0, 255).astype(np.uint8)))


def write_frames(folder: Path) -> dict[str, Path]:
    """Write the demo's frames: an enrolled person, another person, and a scene with no face."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "grace_hopper": camera_frame(_grace_hopper()),
        "astronaut": camera_frame(_skimage("astronaut").crop(ASTRONAUT_HEAD)),
        "no_face": camera_frame(_skimage("coffee")),
    }
    paths = {}
    for name, image in frames.items():
        path = folder / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(image))
        paths[name] = path
    return paths


@dataclass(frozen=True)
class DemoFrames:
    """What the demo shows the camera: the person it enrolls, other people, and no face at all."""

    person: str
    enrolled: Path
    others: list[Path]
    no_face: Path


def person_name(path: Path) -> str:
    """A readable name from a file name: `1_grace_hopper.jpg` -> `Grace Hopper` (a leading number
    only sets the order)."""
    words = re.sub(r"^\d+(?=[ _-])", "", path.stem).replace("_", " ").replace("-", " ").split()
    return " ".join(word.capitalize() for word in words)[:64] or "Person One"


def demo_frames(folder: Path, photos: Path | None = None) -> DemoFrames:
    """Frames from the packaged pictures, or from `photos` (a folder: its first image, by name, is
    the person enrolled; the others are other people). The no-face frame is always the coffee."""
    written = write_frames(folder)
    if photos is None:
        return DemoFrames(
            "Grace Hopper", written["grace_hopper"], [written["astronaut"]], written["no_face"]
        )
    pictures = sorted(p for p in photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if len(pictures) < 2:
        raise ValueError(
            f"{photos} needs at least two photos (.jpg/.jpeg/.png): the person "
            "to enroll first (by file name), then at least one other person"
        )
    frames = []
    for i, picture in enumerate(pictures):
        with Image.open(picture) as image:
            path = folder / f"photo-{i}.jpg"
            upright = ImageOps.exif_transpose(image).convert("RGB")
            path.write_bytes(jpeg_bytes(camera_frame(upright)))
        frames.append(path)
    return DemoFrames(person_name(pictures[0]), frames[0], frames[1:], written["no_face"])
