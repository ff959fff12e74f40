"""What the person at the device reads for each outcome: short, specific, and never technical."""

from __future__ import annotations

SCREEN_MESSAGES: dict[str, str] = {
    "not_recognized": "Face not recognised. The screen stays locked.",
    "no_face": "No face found. Look straight at the camera and try again.",
    "face_too_small": "Your face is too far away. Come closer to the camera and try again.",
    "too_dark": "The picture is too dark or the camera is covered. Open the cover or add light.",
    "invalid_image": "The camera picture could not be read. Try again.",
    "not_enrolled": "Nobody is enrolled on this device yet. Ask an administrator to enroll you.",
    "locked_out": "Too many failed attempts. Try again in {retry_after_s} seconds.",
    "device_unreachable": "The login service cannot reach this device's camera. Contact support.",
    "device_auth_failed": "The login service could not sign in to this device. Contact support.",
    "device_tls_error": "The login service does not trust this device. Contact support.",
    "snapshot_unavailable": "No camera picture (is Remote Monitoring enabled?). Contact support.",
    "engine_unavailable": "Face comparison is unavailable right now. Try again in a minute.",
    "engine_busy": "Face comparison is busy. Try again in {retry_after_s} seconds.",
    "config_error": "The login service is misconfigured. Contact support.",
    "store_unavailable": "The login service cannot record logins right now. Contact support.",
    "internal_error": "Face login failed unexpectedly. Try again or contact support.",
    "locked": "Unlock the device with your face first, then update your photo.",
    "busy": "Someone is already logging in on this device. Try again in a moment.",
    "comparison_incomplete": "Face not recognised. The screen stays locked.",
    "reference_unusable": "Face login could not use a stored photo. Your administrator is told.",
    "not_you": "Only the person who unlocked the screen can update their photo. Nothing was saved.",
    "new_person_needs_admin": "New people are added by an administrator. Nothing was saved.",
    "name_taken": "Someone on this device already has that name. Nothing was saved.",
    "session_ended": "The screen was locked before the photo was saved. Unlock and try again.",
    "self_enroll_off": "On this device, photos are added by an administrator.",
    "photo_unusable": "This photo would not recognise you. Face the camera in good light, retry.",
    "several_faces": "More than one face is in view. Only the person enrolling may be in view.",
    "too_many_references": "This device already has the most people it can hold.",
}


def screen_message(code: str, retry_after_s: int | None = None) -> str:
    template = SCREEN_MESSAGES.get(code, SCREEN_MESSAGES["internal_error"])
    return template.format(retry_after_s=retry_after_s or 0)[:255]
