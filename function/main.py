"""Cloud Functions entry point; the work happens in the faceverify package beside this file.

The settings are checked and the engine built here, at import: functions-framework imports
this file before its server starts (locally and on Cloud Run), so a bad variable or a model file
that is not the published one stops the process with one message naming every problem, instead
of a server that answers config_error to each request.
"""

import flask
import functions_framework
from faceverify.service import handle, start_or_refuse

start_or_refuse()


@functions_framework.http
def verify_faces(request: flask.Request) -> flask.Response:
    return handle(request)
