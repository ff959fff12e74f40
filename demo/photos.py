"""Camera-like frames made at run time from pictures that ship inside installed packages
(matplotlib's Grace Hopper, scikit-image's astronaut and coffee): nothing is committed."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

FRAME = (1920, 1080)


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


def write_frames(folder: Path) -> dict[str, Path]:
    """Write the demo's frames: an enrolled person, another person, and a scene with no face."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "grace_hopper": camera_frame(_grace_hopper()),
        "astronaut": camera_frame(_skimage("astronaut")),
        "no_face": camera_frame(_skimage("coffee")),
    }
    paths = {}
    for name, image in frames.items():
        path = folder / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(image))
        paths[name] = path
    return paths
