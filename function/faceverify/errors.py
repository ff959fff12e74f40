"""One error type with a stable machine code, so every layer fails closed the same way."""

from __future__ import annotations


class FaceIdError(Exception):
    """An expected failure: carries the HTTP status, a stable code and a message safe to show."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


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


def too_large(message: str) -> FaceIdError:
    return FaceIdError(413, "too_large", message)


def rate_limited(message: str, retry_after: int) -> FaceIdError:
    return FaceIdError(429, "rate_limited", message, retry_after=retry_after)
