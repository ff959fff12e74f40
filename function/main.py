"""Cloud Functions entry point; the work happens in the faceverify package beside this file."""

import flask
import functions_framework
from faceverify.service import handle


@functions_framework.http
def verify_faces(request: flask.Request) -> flask.Response:
    return handle(request)
