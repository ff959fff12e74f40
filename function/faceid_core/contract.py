"""What the function's API promises its one client, the connector (docs/api.md §1): both sides
read these numbers and names from here, so neither can drift from the other."""

from __future__ import annotations

#: References in one verify request, at most.
MAX_REFERENCES = 10
#: Characters in a reference id, at most (the connector sends opaque ids such as "r0").
ID_MAX_LEN = 128
#: The header that carries the connector's request id to the function, as Cloud Trace reads it
#: (`TRACE/SPAN;o=1`): one login's log lines join across both sides.
TRACE_HEADER = "X-Cloud-Trace-Context"
#: The smallest face (box pixels in the picture as sent) the local engine is trusted on, from its
#: measured face-size curve (docs/accuracy.md): the function's MIN_FACE_PX and the connector's
#: policy.min_face_px (which refuses smaller faces at enrollment) both default to it.
MIN_FACE_PX = 80
