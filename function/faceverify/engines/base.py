"""The engine interface: every engine answers the same questions with the same types."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from faceid_core.errors import upstream_timeout
from faceid_core.images import EncodedImage

#: A probe face at least this share of the widest face's width belongs to the person in front.
IN_FRONT_SHARE = 0.8

T = TypeVar("T")


@dataclass(frozen=True)
class Reference:
    id: str
    image: EncodedImage


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the image's own pixels
    quality: float | None = None


@dataclass(frozen=True)
class Comparison:
    """The best comparison found; `matched` already applies the engine's own rule and threshold."""

    matched: bool
    reference_id: str | None
    score: float
    faces_in_probe: int | None


def in_front(faces: Sequence[T], width: Callable[[T], float]) -> list[T]:
    """The probe's faces that may match: the widest and those nearly as wide, in their order.

    A login is for whoever stands at the device. Someone further back (a smaller face) can
    neither unlock it nor be recognised in their place.
    """
    widest = max((width(face) for face in faces), default=0.0)
    return [face for face in faces if width(face) >= IN_FRONT_SHARE * widest]


class Deadline:
    """One overall time budget shared by every upstream call and retry of a request."""

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def require(self, minimum: float = 0.05) -> float:
        left = self.remaining()
        if left < minimum:
            raise upstream_timeout("The face comparison did not finish in time")
        return left


class Engine(Protocol):
    name: str
    #: (low, high) of this engine's score and threshold scale; higher scores are more alike.
    score_range: tuple[float, float]
    #: The lowest threshold it takes: under it, impostors are accepted (config.THRESHOLD_FLOORS).
    threshold_floor: float

    def default_threshold(self) -> float: ...

    def verify(
        self,
        probe: EncodedImage,
        references: list[Reference],
        threshold: float,
        deadline: Deadline,
    ) -> Comparison: ...

    def inspect(self, image: EncodedImage, deadline: Deadline) -> list[Face]: ...

    def ready(self, deadline: Deadline) -> None:
        """Raise the error every request would meet now (a key that cannot be read, say), found
        without sending an image anywhere or running a model: the readiness probe's question."""
        ...
