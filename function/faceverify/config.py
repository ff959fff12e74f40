"""Settings from environment variables, validated once so a typo fails closed with config_error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import config_error

MXFACE_VERIFY_URL = "https://faceapi.mxface.ai/api/v3/face/verify"
ENGINES = ("local", "mxface")
#: Chosen on the shared face photos (docs/accuracy.md): no impostor pair reaches it, with margin.
LOCAL_THRESHOLD = 0.48
#: The lowest threshold each engine takes (setting or request), in its own scale. local: SFace's
#: published cosine decision point (0.363); under it the model's authors already accept
#: impostors, and on the shared photos some reach it (docs/accuracy.md). mxface: MXFace calls a
#: pair a match only above 60 (`matchResult`); our own check must not be laxer than theirs.
THRESHOLD_FLOORS = {"local": 0.363, "mxface": 60.0}
#: The top of each engine's score scale (a similarity: higher is more alike).
SCORE_TOPS = {"local": 1.0, "mxface": 100.0}


def under_floor(what: str, engine: str) -> str:
    """The one wording of "this threshold would let impostors in", for settings and requests."""
    return (
        f"{what} must be at least {THRESHOLD_FLOORS[engine]:g}, the {engine} engine's floor "
        "(a lower threshold accepts impostors)"
    )


@dataclass(frozen=True)
class Settings:
    engine: str = "local"
    max_request_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 16_000_000  # a 16 MP photo; the connector sends at most 1024 px
    upstream_timeout_s: float = 10.0
    mxface_api_url: str = MXFACE_VERIFY_URL
    mxface_min_confidence: float = 60.0
    mxface_key: str | None = field(default=None, repr=False)  # never printed
    mxface_key_secret: str | None = None
    local_match_threshold: float = LOCAL_THRESHOLD
    min_face_px: int = 80
    dark_mean_level: float = 30.0
    detect_max_side: int = 640
    descriptor_cache_size: int = 256

    @property
    def mxface_detect_url(self) -> str:
        """The detect endpoint sits beside verify; derive it so one variable moves both."""
        base = self.mxface_api_url.rstrip("/")
        if base.endswith("/verify"):
            return base[: -len("verify")] + "detect"
        return base.rsplit("/", 1)[0] + "/detect"


class _Variables:
    """The environment being read. A bad variable is noted and reads as its default, so that
    one message names every problem: a deployment is fixed in one go, not one retry each."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def bad(self, message: str) -> None:
        self.problems.append(message)

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            self.bad(f"{name} must be a number, got {raw!r}")
            return default
        if not low <= value <= high:  # NaN too
            self.bad(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
            return default
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.number(name, default, low, high)
        if value != int(value):
            self.bad(f"{name} must be a whole number")
            return default
        return int(value)

    def threshold(self, name: str, default: float, engine: str) -> float:
        value = self.number(name, default, 0.0, SCORE_TOPS[engine])
        if value < THRESHOLD_FLOORS[engine]:
            self.bad(f"{under_floor(name, engine)}, got {self.env[name]!r}")
            return default
        return value

    def text(self, name: str) -> str | None:
        return (self.env.get(name) or "").strip() or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raises FaceIdError(config_error) naming every bad one."""
    env = os.environ if env is None else env
    read = _Variables(env)
    engine = (env.get("FACE_ENGINE") or "local").strip().lower()
    if engine not in ENGINES:
        read.bad(f"FACE_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
        engine = "local"
    url = (env.get("MXFACE_API_URL") or MXFACE_VERIFY_URL).strip()
    if not url.startswith(("https://", "http://")):
        read.bad("MXFACE_API_URL must be an http(s) URL")
    settings = Settings(
        engine=engine,
        max_request_bytes=read.integer("MAX_REQUEST_BYTES", 10 * 1024 * 1024, 1024, 32 * 1024**2),
        max_image_pixels=read.integer("MAX_IMAGE_PIXELS", 16_000_000, 10_000, 200_000_000),
        upstream_timeout_s=read.number("UPSTREAM_TIMEOUT_S", 10.0, 0.1, 60.0),
        mxface_api_url=url,
        mxface_min_confidence=read.threshold("MXFACE_MIN_CONFIDENCE", 60.0, "mxface"),
        mxface_key=read.text("MXFACE_KEY"),
        mxface_key_secret=read.text("MXFACE_KEY_SECRET"),
        local_match_threshold=read.threshold("LOCAL_MATCH_THRESHOLD", LOCAL_THRESHOLD, "local"),
        min_face_px=read.integer("MIN_FACE_PX", 80, 1, 4096),
        dark_mean_level=read.number("DARK_MEAN_LEVEL", 30.0, 0.0, 255.0),
        detect_max_side=read.integer("DETECT_MAX_SIDE", 640, 160, 4096),
        descriptor_cache_size=read.integer("DESCRIPTOR_CACHE_SIZE", 256, 0, 100_000),
    )
    if len(read.problems) == 1:
        raise config_error(read.problems[0])
    if read.problems:
        raise config_error(f"{len(read.problems)} bad settings: " + "; ".join(read.problems))
    return settings
