"""Property-based tests of the comparison function's input parsing (docs/api.md §1) against the
real `functions-framework` process: whatever arrives, a refusal is a 4xx with a documented code
and the documented error body, never a 5xx and never a match; image bombs are refused before
their pixels are decoded and the worker's memory stays bounded.

Input that would match if it were accepted goes to the MXFace engine (the fake answers `match`
for two identical images), so "never a match" and "never reaches MXFace" are both observable.
Image parsing and bombs go to the local engine, which decodes the images itself."""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from faceid_core.contract import ID_MAX_LEN, MAX_REFERENCES
from faceid_core.images import JPEG_DRAFT_PIXELS
from faceverify.config import Settings
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from devkit.procs import REPO, ServerProcess, start_function
from devkit.samples import b64, grace_hopper_jpeg, verify_request
from tests.support.function_bodies import GOOD, JPEG, json_values

pytestmark = pytest.mark.slow

MAX_PIXELS = Settings().max_image_pixels
#: The most pixels a JPEG's header may announce (faceverify/images.py).
JPEG_CAP = min(JPEG_DRAFT_PIXELS * MAX_PIXELS, Image.MAX_IMAGE_PIXELS)
MAX_BODY = Settings().max_request_bytes
MEMORY_BOUND_MB = 200
#: Settings that must keep their defaults in the processes under test, whatever the caller's
#: environment holds.
DEFAULTS: dict[str, str | None] = dict.fromkeys(
    (
        "MAX_REQUEST_BYTES",
        "MAX_IMAGE_PIXELS",
        "MXFACE_KEY_SECRET",
        "MXFACE_MIN_CONFIDENCE",
        "LOCAL_MATCH_THRESHOLD",
        "UPSTREAM_TIMEOUT_S",
    )
)


def fuzz(examples: int) -> settings:
    """Reproducible runs: the same examples every time, nothing remembered between runs."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None)


def documented_errors() -> set[tuple[int, str]]:
    """(status, code) pairs of the error table in docs/api.md §1."""
    text = (REPO / "docs" / "api.md").read_text()
    section = text.split("## 1.", 1)[1].split("## 2.", 1)[0]
    return {(int(s), c) for s, c in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)}


DOCUMENTED = documented_errors()


@functools.cache
def grace_png() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(grace_hopper_jpeg())).save(out, "PNG")
    return out.getvalue()


# -- processes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mxface_fn(fake):
    env = {
        **DEFAULTS,
        "FACE_ENGINE": "mxface",
        "MXFACE_API_URL": fake.verify_url,
        "MXFACE_KEY": fake.key,
    }
    with start_function("verify_faces", "function/main.py", env) as server:
        yield server


@pytest.fixture(scope="module")
def local_fn():
    with start_function(
        "verify_faces", "function/main.py", {**DEFAULTS, "FACE_ENGINE": "local"}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Connection"] = "close"  # no kept-alive connection to lose by chance
        yield session


def send(
    http: requests.Session, fn: ServerProcess, body: Any, path: str = "/"
) -> requests.Response:
    """POST `body` as JSON (NaN and Infinity written as Python does), or raw bytes as they are."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return http.post(f"{fn.url}{path}", data=raw, headers=headers, timeout=60)


def refusal(response: requests.Response) -> tuple[int, str]:
    """Check a refusal has the documented shape; returns its (status, code)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    code = body["error"].get("code")
    named = {"reference_id"} if code == "reference_unusable" else set()
    assert set(body["error"]) == {"code", "message"} | named, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    answer = (response.status_code, code)
    assert answer in DOCUMENTED, answer
    return answer


def refused_before_mxface(http, fn, fake, body, path="/") -> tuple[int, str]:
    before = fake.count()
    answer = refusal(send(http, fn, body, path))
    assert fake.count() == before, "refused input reached MXFace"
    return answer


STRICT_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def strict_base64(text: str) -> bool:
    """docs/api.md: RFC 4648 with padding, after an optional `data:...,` prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    return bool(text) and STRICT_BASE64.fullmatch(text) is not None


def with_value(body: dict, path: tuple[str | int, ...], value: Any) -> dict:
    """A copy of `body` with the value at `path` (keys and list indexes) replaced."""
    body = copy.deepcopy(body)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


# -- positive controls: what the refusals below would otherwise have been --------------------


def test_the_well_formed_request_matches_through_mxface(http, mxface_fn, fake):
    before = fake.count()
    assert send(http, mxface_fn, GOOD).json()["verdict"] == "match"
    assert fake.count() == before + 1


@pytest.mark.parametrize("image", [grace_hopper_jpeg, grace_png], ids=["jpeg", "png"])
def test_a_complete_image_matches_itself_with_the_local_engine(http, local_fn, image):
    body = verify_request(image(), {"grace": image()})
    assert send(http, local_fn, body).json()["verdict"] == "match"


@functools.cache
def grey_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


@fuzz(15)
@given(ids=st.lists(st.text(min_size=1, max_size=ID_MAX_LEN), min_size=2, max_size=3, unique=True))
@example(ids=["é" * ID_MAX_LEN, "x"])
def test_an_unusable_reference_is_named_by_exactly_the_id_sent(http, local_fn, ids):
    """Whatever the ids hold, the first reference without a face comes back as it was sent."""
    refs = [{"id": ref_id, "image": b64(grey_jpeg())} for ref_id in ids]
    body = {"probe": b64(grace_hopper_jpeg()), "references": refs}
    response = send(http, local_fn, body)
    assert refusal(response) == (422, "reference_unusable")
    assert response.json()["error"]["reference_id"] == ids[0]


# -- any JSON, wrong types, huge values ---------------------------------------------------------


@fuzz(150)
@given(body=json_values, path=st.sampled_from(["/", "/verify", "/inspect"]))
@example(body=[], path="/")
@example(body={"probe": None, "references": None}, path="/")
def test_any_json_value_as_the_body_is_a_documented_refusal_before_mxface(
    http, mxface_fn, fake, body, path
):
    answer = refused_before_mxface(http, mxface_fn, fake, body, path)
    if not isinstance(body, dict):
        assert answer == (400, "bad_request")
    else:
        assert answer in {(400, "bad_request"), (422, "invalid_image")}


not_a_string = json_values.filter(lambda v: not isinstance(v, str))


def usable_threshold(value: Any) -> bool:
    """The documented range for the MXFace engine (its floor 60 to 100), or absent (null)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (isinstance(value, int) or math.isfinite(value)) and 60 <= value <= 100


WRONG_TYPES: dict[tuple[str | int, ...], st.SearchStrategy] = {
    ("probe",): not_a_string | st.just(""),
    ("references",): json_values.filter(lambda v: not isinstance(v, list))
    | st.just([])
    | st.integers(MAX_REFERENCES + 1, 3 * MAX_REFERENCES).map(lambda n: GOOD["references"] * n),
    ("references", 0): json_values.filter(lambda v: not isinstance(v, dict)),
    ("references", 0, "id"): not_a_string
    | st.just("")
    | st.integers(ID_MAX_LEN + 1, 10_000).map(lambda n: "x" * n),
    ("references", 0, "image"): not_a_string | st.just(""),
    ("threshold",): json_values.filter(lambda v: not usable_threshold(v)),
}


@fuzz(150)
@given(data=st.data(), field=st.sampled_from(sorted(WRONG_TYPES, key=str)))
def test_a_wrong_type_in_any_field_of_a_matching_request_is_bad_request(
    http, mxface_fn, fake, data, field
):
    value = data.draw(WRONG_TYPES[field], label=".".join(map(str, field)))
    body = with_value(GOOD, field, value)
    assert refused_before_mxface(http, mxface_fn, fake, body) == (400, "bad_request")


bad_thresholds = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), True, False]),
    st.floats(max_value=-1e-300),
    st.floats(min_value=0.0, max_value=60.0, exclude_max=True),  # under the floor
    st.integers(0, 59),
    st.floats(min_value=100.0, exclude_min=True),
    st.integers(max_value=-1),
    st.integers(min_value=101),
    st.text(max_size=10),
    st.lists(st.integers(0, 100), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 100), max_size=2),
)


@fuzz(80)
@given(threshold=bad_thresholds)
@example(threshold="60")
@example(threshold=0)
@example(threshold=59.999)
def test_a_threshold_that_is_not_a_number_in_range_is_bad_request(http, mxface_fn, fake, threshold):
    assert not usable_threshold(threshold)
    body = with_value(GOOD, ("threshold",), threshold)
    assert refused_before_mxface(http, mxface_fn, fake, body) == (400, "bad_request")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1" + "0" * 5000])
def test_a_threshold_literal_beyond_floats_is_bad_request(http, mxface_fn, fake, literal):
    raw = json.dumps(GOOD)[:-1] + f', "threshold": {literal}}}'
    assert refused_before_mxface(http, mxface_fn, fake, raw.encode()) == (400, "bad_request")


@fuzz(12)
@given(
    field=st.sampled_from([("probe",), ("references", 0, "image"), ("references", 0, "id")]),
    size=st.integers(ID_MAX_LEN + 1, 100_000) | st.integers(MAX_BODY - 1024, MAX_BODY + 1024),
    char=st.sampled_from("A+é"),
)
@example(field=("probe",), size=MAX_BODY, char="A")
@example(field=("references", 0, "image"), size=4 * 1000, char="+")
def test_a_huge_string_in_any_field_is_too_large_or_refused(
    http, mxface_fn, fake, field, size, char
):
    body = json.dumps(with_value(GOOD, field, char * size)).encode()
    answer = refused_before_mxface(http, mxface_fn, fake, body)
    if len(body) > MAX_BODY:
        assert answer == (413, "too_large")
    elif field[-1] == "id" or not strict_base64(char * size):
        assert answer == (400, "bad_request")
    else:  # "AAAA" or "++++": strict base64 of bytes that are not a picture
        assert answer == (422, "invalid_image")


# -- base64 -------------------------------------------------------------------------------------

IMAGE_FIELDS = [("/", ("probe",)), ("/", ("references", 0, "image")), ("/inspect", ("image",))]


def damaged(text: str, at: int, insert: str) -> str:
    return text[:at] + insert + text[at:]


SMALL_B64 = b64(JPEG[:300])  # a valid base64 text; its image does not matter here
not_base64 = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="ABCxyz019+/=-_ \n\t.:,é", max_size=40),
    st.builds(damaged, st.just(SMALL_B64), st.integers(0, len(SMALL_B64)), st.text(max_size=3)),
    st.text(alphabet="=", min_size=1, max_size=4).map(lambda pad: SMALL_B64 + pad),
    st.text(alphabet="=", min_size=1, max_size=4).map(lambda pad: b64(JPEG) + pad),
    st.builds(lambda s: "data:image/png;base64," + s, st.text(max_size=12)),
).filter(lambda text: not strict_base64(text))


@fuzz(150)
@given(text=not_base64, where=st.sampled_from(IMAGE_FIELDS))
@example(text=b64(JPEG) + "=", where=IMAGE_FIELDS[0])
@example(text=b64(JPEG)[:-4] + "====", where=IMAGE_FIELDS[0])
def test_text_that_is_not_strict_base64_is_bad_request(http, mxface_fn, fake, text, where):
    path, field = where
    body = with_value(GOOD if path == "/" else {"image": ""}, field, text)
    assert refused_before_mxface(http, mxface_fn, fake, body, path) == (400, "bad_request")


not_an_image = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.sampled_from([b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0", b"%PDF-", b"<svg"]).flatmap(
        lambda magic: st.binary(max_size=200).map(lambda rest: magic + rest)
    ),
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]).flatmap(
        lambda magic: st.binary(max_size=200).map(lambda rest: magic + rest)
    ),
)


@fuzz(120)
@given(data=not_an_image, where=st.sampled_from(IMAGE_FIELDS))
def test_base64_of_anything_but_a_jpeg_or_png_is_invalid_image(http, local_fn, data, where):
    path, field = where
    body = with_value(GOOD if path == "/" else {"image": ""}, field, b64(data))
    assert refusal(send(http, local_fn, body, path)) == (422, "invalid_image")


@fuzz(60)
@given(
    image=st.sampled_from([grace_hopper_jpeg, grace_png]),
    cut=st.floats(0.0, 1.0, exclude_max=True),
    tail=st.integers(1, 64),
    from_end=st.booleans(),
    where=st.sampled_from(IMAGE_FIELDS),
)
def test_an_image_cut_at_any_offset_is_invalid_image_never_a_match(
    http, local_fn, image, cut, tail, from_end, where
):
    """The other image is the complete same picture: accepted, the cut one would match it."""
    data = image()
    end = len(data) - tail if from_end else max(1, int(len(data) * cut))
    path, field = where
    body = verify_request(data, {"grace": data}) if path == "/" else {"image": ""}
    body = with_value(body, field, b64(data[:end]))
    assert refusal(send(http, local_fn, body, path)) == (422, "invalid_image")


# -- bombs and memory ---------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, *, color_type: int = 2, extra: bytes = b"") -> bytes:
    """A PNG (8 bits per sample) with correct CRCs, whatever size its header declares."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def zeros_deflated(size: int) -> bytes:
    """A zlib stream of `size` zero bytes, about 1/230 of that (level 1: quick to build)."""
    packer = zlib.compressobj(1)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size >> 20)]
    parts += [packer.compress(bytes(size & ((1 << 20) - 1))), packer.flush()]
    return b"".join(parts)


@functools.cache
def pixel_bomb() -> bytes:
    """RGB, just over the pixel cap, every row present: about 120 MB once decoded."""
    side = math.isqrt(MAX_PIXELS) + 1
    return png(side, side, zeros_deflated(side * (1 + 3 * side)))


@functools.cache
def text_bombs() -> list[bytes]:
    """A small valid PNG whose zTXt or iCCP chunk inflates to 256 MB."""
    payload = b"\0" + zeros_deflated(256 << 20)  # compression method 0, then the stream
    small = zlib.compress(bytes(32 * (1 + 3 * 32)))
    return [
        png(32, 32, small, extra=png_chunk(b"zTXt", b"Comment\0" + payload)),
        png(32, 32, small, extra=png_chunk(b"iCCP", b"profile\0" + payload)),
    ]


def jpeg_declaring(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOFn) claiming another size; the scan is unchanged."""
    at = 2
    while at + 4 <= len(data):
        marker = data[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    raise ValueError("no frame header")


def over_the_cap(largest: int, cap: int = MAX_PIXELS) -> st.SearchStrategy[tuple[int, int]]:
    """(width, height), each at most `largest`, whose product is over `cap`."""
    smallest_width = cap // largest + 1
    return st.integers(smallest_width, largest).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(cap // w + 1, largest))
    )


def worker_pid(server: ServerProcess) -> int:
    """functions-framework serves from a gunicorn worker forked from the process started."""
    assert server.pid is not None
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) <= 1, f"expected one worker, found {children}"
    return int(children[0]) if children else server.pid


def memory_mb(pid: int) -> dict[str, float]:
    """Resident size now (VmRSS) and its peak since the last reset (VmHWM), in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # proc(5): resets VmHWM to VmRSS


def bomb_body(image: bytes, where: tuple[str, tuple]) -> tuple[str, dict]:
    path, field = where
    body = verify_request(JPEG, {"a": JPEG}) if path == "/" else {"image": ""}
    return path, with_value(body, field, b64(image))


def test_image_bombs_are_invalid_image_and_the_worker_memory_stays_bounded(http, local_fn):
    """PNGs over MAX_IMAGE_PIXELS (real pixel data or only a header that says so), JPEGs over
    JPEG_CAP (they decode at an eighth at most) and PNGs whose text or colour-profile chunk
    inflates to 256 MB are refused from their headers; a JPEG whose header claims 81 MP under
    that cap is decoded at an eighth and never matches. The worker's resident memory, now and
    at its peak (VmHWM, reset first), grows by less than MEMORY_BOUND_MB, where decoding any one
    of them in full would take more."""
    bombs = [pixel_bomb(), *text_bombs(), jpeg_declaring(JPEG, 65_535, 65_535)]
    pid = worker_pid(local_fn)
    send(http, local_fn, verify_request(JPEG, {"a": JPEG}))  # models loaded, caches warm
    before = memory_mb(pid)
    if pid != local_fn.pid:  # the models live where requests are served: the right process
        assert before["VmRSS"] > memory_mb(local_fn.pid)["VmRSS"] + 30
    reset_peak(pid)

    for image in bombs:
        for where in IMAGE_FIELDS:
            path, body = bomb_body(image, where)
            assert refusal(send(http, local_fn, body, path)) == (422, "invalid_image")

    @fuzz(40)
    @given(
        size=over_the_cap(2**31 - 1),
        color_type=st.sampled_from([0, 2, 6]),
        where=st.sampled_from(IMAGE_FIELDS),
    )
    def png_header_bombs(size, color_type, where):
        image = png(*size, zlib.compress(bytes(64)), color_type=color_type)
        path, body = bomb_body(image, where)
        assert refusal(send(http, local_fn, body, path)) == (422, "invalid_image")

    for where in IMAGE_FIELDS:  # under the JPEG cap: decoded at an eighth, its scan runs short
        path, body = bomb_body(jpeg_declaring(JPEG, 9_000, 9_000), where)
        answer = send(http, local_fn, body, path)
        assert answer.status_code in (200, 422) and answer.json().get("verdict") != "match"

    @fuzz(25)
    @given(
        size=over_the_cap(65_535, JPEG_CAP),
        where=st.sampled_from(IMAGE_FIELDS),
    )
    def jpeg_header_bombs(size, where):
        path, body = bomb_body(jpeg_declaring(JPEG, *size), where)
        assert refusal(send(http, local_fn, body, path)) == (422, "invalid_image")

    png_header_bombs()
    jpeg_header_bombs()
    after = memory_mb(pid)
    assert after["VmRSS"] - before["VmRSS"] < MEMORY_BOUND_MB, (before, after)
    assert after["VmHWM"] - before["VmRSS"] < MEMORY_BOUND_MB, (before, after)
