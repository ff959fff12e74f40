"""The expected failures of face login, as one family: each carries a stable machine `code` and a
`message` safe to show, and no HTTP status. Callers catch a family; the two HTTP edges
(faceverify/service.py, connector/app.py) give each code its status, the connector's command line
(connector/__main__.py) gives each family its exit status.

    FaceIdError                   every expected failure; all of them fail closed
    ├── InputError                the request as sent cannot be used: bad_request, not_found,
    │   │                         method_not_allowed, too_large, invalid_image
    │   └── AuthError             a macro request that does not prove its device (connector):
    │                             unauthorized, clock_skew, replayed
    ├── FaceError                 the picture holds no face to compare: no_face, face_too_small,
    │   │                         too_dark
    │   └── ReferenceUnusable     reference_unusable: a stored reference photo holds none
    ├── ConfigurationError        config_error: a setting, secret, key or model is wrong
    ├── UpstreamError             a service the function calls failed (MXFace, Secret Manager):
    │   │                         upstream_error, upstream_timeout, rate_limited
    │   └── ComparisonIncomplete  comparison_incomplete: some references compared and did not
    │                             match, the others failed
    ├── DeviceError               the RoomOS device (connector): device_unreachable,
    │                             device_auth_failed, device_tls_error, snapshot_unavailable
    ├── EngineError               the comparison function, seen from the connector:
    │                             engine_unavailable, engine_busy
    ├── StoreError                the connector's store: store_unavailable, internal_error (a row
    │                             that fails its integrity check)
    ├── Refusal                   understood and declined: enrollment's rules (locked, not_you,
    │                             ...) and limits that pass (busy, rate_limited)
    └── InternalError             internal_error: a bug, or a broken promise between our parts

The factories at the end name the common codes (and hold the face codes' default words), so
call sites stay short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self


class FaceIdError(Exception):
    """An expected failure: a stable code for machines and a message safe to show anyone.

    `details` are the few facts a caller acts on beyond the code (reference_unusable's
    `reference_id`); they go into the JSON body and the log line, and most errors have none.
    `retry_after` (seconds) says when trying again makes sense, for limits that pass.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = dict(details or {})

    def to_json(self) -> dict[str, dict[str, str]]:
        """The error body both APIs answer: `{"error": {"code", "message", ...details}}`."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def fresh(self) -> Self:
        """The same error as a new exception object: one failure shared by several threads (a
        cached secret, a token refresh) is raised in each without a traceback they share."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = self.args
        return clone


class InputError(FaceIdError):
    """The request as sent cannot be used: its shape, size, path, method or image bytes."""


class AuthError(InputError):
    """A macro request that does not prove it comes from its device (docs/api.md §2)."""


class FaceError(FaceIdError):
    """The picture was read but holds no face to compare: the person at the camera can fix it."""


class ReferenceUnusable(FaceError):
    """A stored reference photo holds no usable face. It is named (`reference_id`, None when the
    function's answer named none) so that it can be replaced: the person at the device is not to
    blame, and "no face" would tell them they are. Nothing could match: a failed attempt."""

    def __init__(
        self,
        reference_id: str | None,
        message: str = "No usable face was found in the stored reference photo named by "
        "reference_id; replace that photo.",
    ) -> None:
        details = None if reference_id is None else {"reference_id": reference_id}
        super().__init__("reference_unusable", message, details=details)
        self.reference_id = reference_id


class ConfigurationError(FaceIdError):
    """A setting, secret, key or model is wrong or missing: an operator must fix it."""


class UpstreamError(FaceIdError):
    """A service the function relies on failed, timed out or is rate limiting it."""


class ComparisonIncomplete(UpstreamError):
    """Some references were compared with the probe and did not match, others could not be:
    not a match, and not "no comparison" either (the connector counts it as a failed attempt)."""

    def __init__(self, message: str) -> None:
        super().__init__("comparison_incomplete", message)


class DeviceError(FaceIdError):
    """The RoomOS device could not be reached, signed in to, trusted, or give a snapshot."""


class EngineError(FaceIdError):
    """The comparison function failed, timed out, answered garbage or is rate limited."""


class StoreError(FaceIdError):
    """The connector's store refused a read or write, or holds a row that fails its check."""


class Refusal(FaceIdError):
    """Understood and declined: a rule says no (enrollment's), or a limit says not now."""


class InternalError(FaceIdError):
    """A bug, or one part breaking a promise to another: fails closed, logged by its type."""


def bad_request(message: str) -> InputError:
    return InputError("bad_request", message)


def too_large(message: str) -> InputError:
    return InputError("too_large", message)


def invalid_image(message: str) -> InputError:
    return InputError("invalid_image", message)


def no_face(message: str = "No face was found in the image. Look at the camera.") -> FaceError:
    return FaceError("no_face", message)


def face_too_small(
    message: str = "The face is too small in the picture. Come closer to the camera.",
) -> FaceError:
    return FaceError("face_too_small", message)


def too_dark(
    message: str = "The picture is too dark or the camera is covered. "
    "Uncover the camera or turn on the light.",
) -> FaceError:
    return FaceError("too_dark", message)


def config_error(message: str) -> ConfigurationError:
    return ConfigurationError("config_error", message)


def upstream_error(message: str) -> UpstreamError:
    return UpstreamError("upstream_error", message)


def upstream_timeout(message: str) -> UpstreamError:
    return UpstreamError("upstream_timeout", message)


def rate_limited(message: str, retry_after: int) -> UpstreamError:
    return UpstreamError("rate_limited", message, retry_after=retry_after)


def comparison_incomplete(cause: str) -> ComparisonIncomplete:
    """The function's words, naming the code of the comparisons that failed."""
    return ComparisonIncomplete(
        f"Some comparisons did not match and the others failed ({cause}): not a match"
    )


def engine_unavailable(message: str) -> EngineError:
    return EngineError("engine_unavailable", message)


def store_unavailable(message: str) -> StoreError:
    return StoreError("store_unavailable", message)


def internal_error(message: str) -> InternalError:
    return InternalError("internal_error", message)
