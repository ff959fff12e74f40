"""One error type with a stable machine code, so every layer fails closed the same way."""

from __future__ import annotations

from collections.abc import Mapping


class FaceIdError(Exception):
    """An expected failure: carries the HTTP status, a stable code and a message safe to show.

    `details` are the few facts a caller acts on beyond the code (reference_unusable's
    `reference_id`); they go into the JSON body and the log line, and most errors have none.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = dict(details or {})

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def bad_request(message: str) -> FaceIdError:
    return FaceIdError(400, "bad_request", message)


def config_error(message: str) -> FaceIdError:
    return FaceIdError(500, "config_error", message)


def upstream_error(message: str) -> FaceIdError:
    return FaceIdError(502, "upstream_error", message)


def upstream_timeout(message: str) -> FaceIdError:
    return FaceIdError(504, "upstream_timeout", message)


def invalid_image(message: str) -> FaceIdError:
    return FaceIdError(422, "invalid_image", message)


def no_face(message: str = "No face was found in the image. Look at the camera.") -> FaceIdError:
    return FaceIdError(422, "no_face", message)


def face_too_small(
    message: str = "The face is too small in the picture. Come closer to the camera.",
) -> FaceIdError:
    return FaceIdError(422, "face_too_small", message)


def too_dark(
    message: str = "The picture is too dark or the camera is covered. "
    "Uncover the camera or turn on the light.",
) -> FaceIdError:
    return FaceIdError(422, "too_dark", message)


def comparison_incomplete(cause: str) -> FaceIdError:
    """Some references were compared with the probe and did not match, others could not be:
    not a match, and not "no comparison" either (the caller counts it as a failed attempt)."""
    return FaceIdError(
        502,
        "comparison_incomplete",
        f"Some comparisons did not match and the others failed ({cause}): not a match",
    )


def reference_unusable(reference_id: str) -> FaceIdError:
    """A stored reference photo without a usable face, named, so that it can be replaced: the
    person at the device is not to blame, and "no face" would tell them they are."""
    return FaceIdError(
        422,
        "reference_unusable",
        "No usable face was found in the stored reference photo named by reference_id; "
        "replace that photo.",
        details={"reference_id": reference_id},
    )


def too_large(message: str) -> FaceIdError:
    return FaceIdError(413, "too_large", message)


def rate_limited(message: str, retry_after: int) -> FaceIdError:
    return FaceIdError(429, "rate_limited", message, retry_after=retry_after)
