"""The engine interface: every engine answers the same two questions with the same types."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from ..errors import upstream_timeout
from ..images import EncodedImage


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

    def default_threshold(self) -> float: ...

    def verify(
        self,
        probe: EncodedImage,
        references: list[Reference],
        threshold: float,
        deadline: Deadline,
    ) -> Comparison: ...

    def inspect(self, image: EncodedImage, deadline: Deadline) -> list[Face]: ...
