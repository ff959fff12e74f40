"""Local engine: dlib's HOG detector, 5-point alignment and ResNet descriptor, on this machine.

The models ship inside the face-recognition-models package (nothing is downloaded) and load once
per process. The score is 1 - euclidean distance between two descriptors, clamped to [0, 1].
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from ..config import SCORE_TOPS, THRESHOLD_FLOORS, Settings
from ..errors import (
    FaceIdError,
    config_error,
    face_too_small,
    no_face,
    reference_unusable,
    too_dark,
)
from ..images import EncodedImage, to_rgb
from .base import Comparison, Deadline, Face, Reference, in_front

MODEL_PACKAGE = "face_recognition_models"
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: A detector box this wide fills the 150 px chip at about one source pixel per chip pixel.
CHIP_FACE_PX = 100
#: About the smallest face the HOG window finds at native scale (measured: 60 px).
DETECTOR_MIN_FACE_PX = 64
#: The second pass looks for faces down to this share of MIN_FACE_PX, so that a person too far
#: away is told to come closer rather than that there is no face.
SMALL_FACE_SHARE = 2 / 3
#: Bounds the second pass: its long side is at most this many times DETECT_MAX_SIDE.
MAX_RETRY_FACTOR = 4
#: Detections scoring under this (dlib's HOG margin) are mostly textures, not faces; a real
#: face that small in the first pass scores higher in the finer second pass.
MIN_DETECTION_SCORE = 0.3
#: Only the largest faces in front are compared, which bounds the time of a crowded picture.
MAX_PROBE_FACES = 4


def model_folder() -> Path:
    """The package's model folder, found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "models"
        if (folder / SHAPE_MODEL).is_file() and (folder / DESCRIPTOR_MODEL).is_file():
            return folder
    raise config_error("The local face models are missing: install face-recognition-models")


class Models:
    """dlib's three models, shared by every engine of the process.

    The HOG detector keeps per-image state, so concurrent detections (it releases the GIL) each
    use their own copy, at most one per core. The shape predictor is documented as safe to share.
    The descriptor network keeps per-call buffers and holds the GIL while it runs, so a single
    instance behind a lock costs no concurrency.
    """

    def __init__(self, folder: Path) -> None:
        self._template = dlib.get_frontal_face_detector()
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self._copy_lock = threading.Lock()
        self.shape = dlib.shape_predictor(str(folder / SHAPE_MODEL))
        self._net = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_MODEL))
        self._net_lock = threading.Lock()

    def detect(self, gray: np.ndarray) -> list[dlib.rectangle]:
        with self._slots:
            try:
                detector = self._idle.get_nowait()
            except queue.Empty:
                with self._copy_lock:  # copying is cheap (1 ms); building one takes 0.5 s
                    detector = copy.copy(self._template)
            try:
                rects, _, _ = detector.run(gray, 0, MIN_DETECTION_SCORE)
                return list(rects)
            finally:
                self._idle.put(detector)

    def descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """One 128-d row per aligned 150x150 RGB chip."""
        with self._net_lock:
            vectors = self._net.compute_face_descriptor(chips)
        result = np.array([list(v) for v in vectors], dtype=np.float64)
        result.setflags(write=False)
        return result


_models: Models | None = None
_models_lock = threading.Lock()


def shared_models() -> Models:
    """Load the models on first use only, so importing faceverify stays cheap."""
    global _models
    with _models_lock:
        if _models is None:
            _models = Models(model_folder())
        return _models


def similarity(probe: np.ndarray, reference: np.ndarray) -> float:
    """The best score of any probe row against one reference descriptor."""
    distances = np.linalg.norm(np.atleast_2d(probe) - reference, axis=1)
    return float(np.clip(1.0 - distances, 0.0, 1.0).max())


@dataclass(frozen=True, eq=False)
class _View:
    """The image decoded at `scale` view pixels per original pixel."""

    rgb: np.ndarray
    gray: np.ndarray
    scale: float


@dataclass(frozen=True, eq=False)
class _Found:
    box: tuple[int, int, int, int]  # x, y, w, h in the original image's pixels
    rect: dlib.rectangle  # the same face in `view` pixels
    view: _View

    @property
    def side(self) -> int:
        return min(self.box[2], self.box[3])

    @property
    def coarse(self) -> bool:
        """Too few pixels in its view for a sharp chip, while the original has more."""
        return self.rect.width() < CHIP_FACE_PX and self.view.scale < 1.0


def _scaled(rect: dlib.rectangle, factor: float) -> dlib.rectangle:
    return dlib.rectangle(
        round(rect.left() * factor),
        round(rect.top() * factor),
        round(rect.right() * factor),
        round(rect.bottom() * factor),
    )


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

    # -- pixels and faces ---------------------------------------------------------------
    def _view(self, image: EncodedImage, side: int, field: str) -> _View:
        """Decode with the long side at `side` pixels: cheaply down (JPEG draft), bilinear up."""
        long_side = max(image.width, image.height)
        pil = to_rgb(image.data, min(side, long_side), self.settings.max_image_pixels, field)
        if side > long_side:
            factor = side / long_side
            size = (round(pil.width * factor), round(pil.height * factor))
            pil = pil.resize(size, Image.Resampling.BILINEAR)
        return _View(np.asarray(pil), np.asarray(pil.convert("L")), pil.width / image.width)

    def _detect(self, view: _View, image: EncodedImage) -> list[_Found]:
        found = []
        for rect in self.models.detect(view.gray):
            left = max(0, math.floor(rect.left() / view.scale))
            top = max(0, math.floor(rect.top() / view.scale))
            right = min(image.width, math.ceil((rect.right() + 1) / view.scale))
            bottom = min(image.height, math.ceil((rect.bottom() + 1) / view.scale))
            if right > left and bottom > top:
                found.append(_Found((left, top, right - left, bottom - top), rect, view))
        return found

    def _find_faces(self, image: EncodedImage, field: str, check_light: bool) -> list[_Found]:
        """Faces, largest first. A finer, costlier pass runs only when the first finds none."""
        long_side = max(image.width, image.height)
        first = self._view(image, min(long_side, self.settings.detect_max_side), field)
        if check_light and float(first.gray.mean()) < self.settings.dark_mean_level:
            raise too_dark()
        faces = self._detect(first, image)
        if not faces:
            wanted = DETECTOR_MIN_FACE_PX / (SMALL_FACE_SHARE * self.settings.min_face_px)
            scale = max(2 * first.scale, wanted)
            side = min(
                round(long_side * scale),
                MAX_RETRY_FACTOR * self.settings.detect_max_side,
            )
            if side > max(first.gray.shape):
                faces = self._detect(self._view(image, side, field), image)
        return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)

    def _describe(self, image: EncodedImage, faces: list[_Found], field: str) -> np.ndarray:
        """Descriptors from 150 px chips; faces too small in their view are cut from a finer one."""
        coarse = [f for f in faces if f.coarse]
        finer = None
        if coarse:
            scale = min(1.0, max(CHIP_FACE_PX / max(1, f.box[2]) for f in coarse))
            finer = self._view(image, math.ceil(max(image.width, image.height) * scale), field)
        chips = []
        for face in faces:
            view, rect = face.view, face.rect
            if finer is not None and face.coarse:
                view, rect = finer, _scaled(rect, finer.scale / face.view.scale)
            shape = self.models.shape(view.rgb, rect)
            chips.append(dlib.get_face_chip(view.rgb, shape, CHIP_SIZE, CHIP_PADDING))
        return self.models.descriptors(chips)

    # -- descriptors, public for the benchmarks -----------------------------------------
    def probe_descriptors(
        self, image: EncodedImage, field: str = "probe"
    ) -> tuple[np.ndarray, int]:
        """Descriptors of the usable faces in front (largest first) and the number of faces seen.

        Raises too_dark, no_face or face_too_small with a message for the person at the device;
        a face in front that is too small never gives way to a smaller one behind.
        """
        faces = self._find_faces(image, field, check_light=True)
        if not faces:
            raise no_face()
        front = in_front(faces, lambda f: f.box[2])
        usable = [f for f in front if f.side >= self.settings.min_face_px]
        if not usable:
            raise face_too_small()
        return self._describe(image, usable[:MAX_PROBE_FACES], field), len(faces)

    def reference_descriptor(self, image: EncodedImage, field: str = "reference") -> np.ndarray:
        """The largest face's descriptor, from an LRU keyed by the SHA-256 of the image bytes."""
        key = hashlib.sha256(image.data).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        faces = self._find_faces(image, field, check_light=False)
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
            except FaceIdError as exc:
                errors.append(reference_unusable(ref.id) if exc.code == "no_face" else exc)
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
        return [Face(f.box) for f in self._find_faces(image, "image", check_light=True)]
