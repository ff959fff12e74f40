"""Image preparation: a small, quick probe from a full-HD snapshot, and face crops with margin."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from faceid_core.errors import FaceIdError
from PIL import Image

from connector.faces import crop_face, downscale_jpeg
from devkit.samples import astronaut_image


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def full_hd_snapshot() -> bytes:
    """1920x1080 with sensor-like noise, so it compresses like a camera picture."""
    base = np.asarray(astronaut_image().resize((1920, 1080)), dtype=np.int16)
    noise = np.random.default_rng(7).normal(0, 6, base.shape).astype(np.int16)
    return jpeg(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))


def test_a_full_hd_snapshot_becomes_a_small_probe(full_hd_snapshot):
    started = time.perf_counter()
    probe = downscale_jpeg(full_hd_snapshot)
    elapsed_ms = (time.perf_counter() - started) * 1000
    image = Image.open(io.BytesIO(probe))
    print(f"probe: {len(full_hd_snapshot)} B -> {len(probe)} B in {elapsed_ms:.0f} ms")
    assert (image.format, image.size) == ("JPEG", (960, 540))
    assert len(probe) < 250_000


def test_a_small_picture_keeps_its_size():
    probe = downscale_jpeg(jpeg(astronaut_image()), max_side=1024)
    assert Image.open(io.BytesIO(probe)).size == (512, 512)


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"\xff\xd8\xff\xe0 truncated"])
def test_an_unreadable_snapshot_is_snapshot_unavailable(data):
    with pytest.raises(FaceIdError) as caught:
        downscale_jpeg(data)
    assert caught.value.code == "snapshot_unavailable"


def test_a_truncated_snapshot_is_snapshot_unavailable(full_hd_snapshot):
    with pytest.raises(FaceIdError) as caught:
        downscale_jpeg(full_hd_snapshot[: len(full_hd_snapshot) // 2])
    assert caught.value.code == "snapshot_unavailable"


def marked_picture() -> bytes:
    """Grey 1000x800 with a red 'face' at (400, 300, 200, 250)."""
    image = Image.new("RGB", (1000, 800), (128, 128, 128))
    image.paste((220, 20, 20), (400, 300, 600, 550))
    return jpeg(image)


def test_the_crop_is_the_face_with_its_margin():
    crop = Image.open(io.BytesIO(crop_face(marked_picture(), (400, 300, 200, 250))))
    assert crop.size == (360, 450)  # 200 + 2 * 80, 250 + 2 * 100
    red, green, _ = crop.getpixel((180, 225))
    assert red > 180 and green < 60
    assert crop.getpixel((5, 5))[0] < 160  # the margin is background


def test_the_crop_stops_at_the_picture_edges_and_is_at_most_512_px():
    crop = Image.open(io.BytesIO(crop_face(marked_picture(), (0, 0, 900, 700))))
    # (0, 0) to (1000, 800) after clipping, then scaled to fit 512.
    assert crop.size == (512, 410)


def test_a_box_outside_the_picture_is_no_face():
    with pytest.raises(FaceIdError) as caught:
        crop_face(marked_picture(), (2000, 2000, 100, 100))
    assert caught.value.code == "no_face"
