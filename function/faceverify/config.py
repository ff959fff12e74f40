"""Settings from environment variables, validated once so a typo fails closed with config_error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import config_error

MXFACE_VERIFY_URL = "https://faceapi.mxface.ai/api/v3/face/verify"
ENGINES = ("local", "mxface")
#: Chosen on the shared face photos (docs/accuracy.md): no impostor pair reaches it, with margin.
LOCAL_THRESHOLD = 0.50


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
    detect_max_side: int = 800
    descriptor_cache_size: int = 256

    @property
    def mxface_detect_url(self) -> str:
        """The detect endpoint sits beside verify; derive it so one variable moves both."""
        base = self.mxface_api_url.rstrip("/")
        if base.endswith("/verify"):
            return base[: -len("verify")] + "detect"
        return base.rsplit("/", 1)[0] + "/detect"


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise config_error(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise config_error(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _number(env, name, default, low, high)
    if value != int(value):
        raise config_error(f"{name} must be a whole number")
    return int(value)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raises FaceIdError(config_error) naming the bad one."""
    env = os.environ if env is None else env
    engine = (env.get("FACE_ENGINE") or "local").strip().lower()
    if engine not in ENGINES:
        raise config_error(f"FACE_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    url = (env.get("MXFACE_API_URL") or MXFACE_VERIFY_URL).strip()
    if not url.startswith(("https://", "http://")):
        raise config_error("MXFACE_API_URL must be an http(s) URL")
    return Settings(
        engine=engine,
        max_request_bytes=_integer(env, "MAX_REQUEST_BYTES", 10 * 1024 * 1024, 1024, 32 * 1024**2),
        max_image_pixels=_integer(env, "MAX_IMAGE_PIXELS", 16_000_000, 10_000, 200_000_000),
        upstream_timeout_s=_number(env, "UPSTREAM_TIMEOUT_S", 10.0, 0.1, 60.0),
        mxface_api_url=url,
        mxface_min_confidence=_number(env, "MXFACE_MIN_CONFIDENCE", 60.0, 0.0, 100.0),
        mxface_key=(env.get("MXFACE_KEY") or "").strip() or None,
        mxface_key_secret=(env.get("MXFACE_KEY_SECRET") or "").strip() or None,
        local_match_threshold=_number(env, "LOCAL_MATCH_THRESHOLD", LOCAL_THRESHOLD, 0.0, 1.0),
        min_face_px=_integer(env, "MIN_FACE_PX", 80, 1, 4096),
        dark_mean_level=_number(env, "DARK_MEAN_LEVEL", 30.0, 0.0, 255.0),
        detect_max_side=_integer(env, "DETECT_MAX_SIDE", 800, 160, 4096),
        descriptor_cache_size=_integer(env, "DESCRIPTOR_CACHE_SIZE", 256, 0, 100_000),
    )
