"""The quality gates judge the face, not the frame, and every JPEG/PNG a person may hold works:
each gate with a real picture (matplotlib's Grace Hopper, scikit-image's astronaut) through the
local engine, the function's decoder and the connector's probe preparation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from faceid_core.errors import FaceIdError
from faceid_core.images import ORIENTATION_TAG, EncodedImage, decode_rgb, parse_image
from faceverify.config import load_settings
from faceverify.engines.base import Deadline, Reference
from faceverify.engines.local import LocalEngine
from faceverify.service import status_of
from PIL import Image, ImageDraw

from connector.faces import downscale_jpeg
from devkit.samples import CAMERA_FRAME, face_in_shadow, grace_hopper_jpeg, portrait

pytestmark = pytest.mark.slow

#: EXIF orientation 6: the camera was held turned, the viewer turns the picture 90 degrees back.
TURNED_RIGHT = 6
MAX_PIXELS = load_settings({}).max_image_pixels


def encoded(data: bytes) -> EncodedImage:
    return parse_image(base64.b64encode(data).decode("ascii"), "image", MAX_PIXELS)


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def png(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def engine() -> LocalEngine:
    return LocalEngine(load_settings({}))


@pytest.fixture(scope="module")
def grace_ref() -> Reference:
    return Reference("grace", encoded(grace_hopper_jpeg()))


def verify(engine: LocalEngine, probe: bytes, *references: Reference):
    return engine.verify(encoded(probe), list(references), engine.default_threshold(), Deadline(30))


def refused(call) -> str:
    with pytest.raises(FaceIdError) as caught:
        call()
    assert status_of(caught.value) == 422
    return caught.value.code


def mean_level(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L")).mean())


# -- light -------------------------------------------------------------------------------------
def test_a_lit_face_in_a_dark_room_matches(engine, grace_ref):
    room = Image.new("RGB", CAMERA_FRAME, (4, 4, 6))
    room.paste(portrait("grace", 220), (800, 260))
    assert mean_level(room) < engine.settings.dark_mean_level  # the old frame-mean gate refused it
    result = verify(engine, jpeg(room), grace_ref)
    assert result.matched and result.reference_id == "grace"


def covered_lens() -> Image.Image:
    """Sensor noise under a hand or a shutter, and a little light leaking in at one corner."""
    width, height = CAMERA_FRAME
    noise = np.random.default_rng(7).integers(0, 16, (height, width), dtype=np.uint8)
    noise[:60, :120] = 210  # 0.35 % of the frame
    return Image.fromarray(noise).convert("RGB")


@pytest.mark.parametrize(
    "frame",
    [
        lambda: Image.new("RGB", CAMERA_FRAME, (0, 0, 0)),
        lambda: covered_lens(),
    ],
    ids=["black frame", "covered lens"],
)
def test_a_black_or_covered_frame_is_too_dark(engine, grace_ref, frame):
    picture = jpeg(frame())
    assert refused(lambda: verify(engine, picture, grace_ref)) == "too_dark"
    assert refused(lambda: engine.inspect(encoded(picture), Deadline(30))) == "too_dark"


def test_a_face_in_deep_shadow_in_a_lit_frame_is_too_dark(engine, grace_ref):
    picture = face_in_shadow("grace")
    assert mean_level(picture) > 3 * engine.settings.dark_mean_level  # the frame is well lit
    assert len(engine.inspect(encoded(jpeg(picture)), Deadline(30))) == 1  # the face is found...
    assert refused(lambda: verify(engine, jpeg(picture), grace_ref)) == "too_dark"  # ...not judged


# -- orientation, transparency, modes ----------------------------------------------------------
def phone_photo() -> bytes:
    """Grace as a phone stores a portrait photo: the pixels turned, EXIF saying how to show them."""
    turned = Image.open(io.BytesIO(grace_hopper_jpeg())).rotate(90, expand=True)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = TURNED_RIGHT
    return jpeg(turned, exif=exif)


def test_a_turned_phone_photo_matches_as_probe_and_as_reference(engine, grace_ref):
    photo = phone_photo()
    stored = Image.open(io.BytesIO(photo))
    assert stored.width > stored.height  # stored on its side: without EXIF, no face is upright
    image = encoded(photo)
    assert (image.width, image.height) == (stored.height, stored.width)  # sizes as seen
    assert verify(engine, photo, grace_ref).matched
    assert verify(engine, grace_hopper_jpeg(), Reference("phone", image)).matched
    (face,) = engine.inspect(image, Deadline(30))
    x, y, w, h = face.box
    assert x + w <= image.width and y + h <= image.height and h > w  # a box in the upright photo


def test_the_connector_turns_a_phone_photo_upright_before_sending_it(engine, grace_ref):
    probe = downscale_jpeg(phone_photo())
    sent = Image.open(io.BytesIO(probe))
    assert sent.height > sent.width and ORIENTATION_TAG not in sent.getexif()
    assert verify(engine, probe, grace_ref).matched


def cut_out(face_px: int = 260) -> Image.Image:
    """Grace's portrait with everything outside an oval transparent, and black under it (what
    most editors store): flattened on black it would be a face in a black frame."""
    picture = portrait("grace", face_px).convert("RGBA")
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, picture.width - 1, picture.height - 1), fill=255)
    clear = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    return Image.composite(picture, clear, mask)


def test_a_transparent_png_is_flattened_on_white_and_matches(engine, grace_ref):
    data = png(cut_out())
    flat = decode_rgb(data, 4096, MAX_PIXELS)
    assert flat.getpixel((0, 0)) == (255, 255, 255)  # a transparent corner
    assert verify(engine, data, grace_ref).matched
    assert verify(engine, grace_hopper_jpeg(), Reference("cut-out", encoded(data))).matched


def test_a_sixteen_bit_grey_png_is_scaled_not_clipped_and_matches(engine, grace_ref):
    grey = np.asarray(portrait("grace", 260).convert("L"), dtype=np.uint16) * 257
    data = png(Image.fromarray(grey))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = np.asarray(decode_rgb(data, 4096, MAX_PIXELS).convert("L"))
    assert 60 < decoded.mean() < 200  # clipped, nearly every pixel would read 255
    assert verify(engine, data, grace_ref).matched


@pytest.mark.parametrize("transparent", [False, True], ids=["palette", "palette+transparency"])
def test_a_palette_png_matches(engine, grace_ref, transparent):
    picture = portrait("grace", 260)
    if transparent:
        picture = cut_out().convert("RGB")
    indexed = picture.quantize(colors=255)
    options = {"transparency": 0} if transparent else {}
    data = png(indexed, **options)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert verify(engine, data, grace_ref).matched


# -- size --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_48mp() -> bytes:
    """An 8000x6000 camera photo with Grace's face about 1,700 px wide."""
    canvas = Image.new("RGB", (8000, 6000), (120, 128, 136))
    canvas.paste(portrait("grace", 1700), (2500, 600))
    return jpeg(canvas)


def test_a_48_megapixel_jpeg_decodes_at_reduced_scale_within_max_pixels(photo_48mp, engine):
    image = encoded(photo_48mp)
    assert image.width * image.height > MAX_PIXELS  # more than any full decode may hold
    view = decode_rgb(photo_48mp, 640, MAX_PIXELS, shrink=False)
    assert view.size == (1000, 750)  # straight at an eighth: no full-size buffer at any point
    full = decode_rgb(photo_48mp, 10**6, MAX_PIXELS)  # even asked for every pixel
    assert full.width * full.height <= MAX_PIXELS


def test_a_48_megapixel_jpeg_matches_and_becomes_a_probe(photo_48mp, engine, grace_ref):
    assert verify(engine, photo_48mp, grace_ref).matched
    probe = downscale_jpeg(photo_48mp)
    assert Image.open(io.BytesIO(probe)).size == (960, 720)
    assert verify(engine, probe, grace_ref).matched


def test_a_png_over_max_pixels_is_refused_before_decoding():
    bomb = png(Image.new("1", (5000, 4000)))  # 20 MP of one colour: a few kB
    with pytest.raises(FaceIdError) as caught:
        encoded(bomb)
    assert caught.value.code == "invalid_image" and "at most 16000000" in caught.value.message
