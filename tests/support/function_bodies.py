"""What the function's contract and fuzz tests send (docs/api.md §1): one well-formed request, and
arbitrary JSON values to put where it has fields."""

from __future__ import annotations

from hypothesis import strategies as st

from devkit.samples import grace_hopper_jpeg, verify_request

JPEG = grace_hopper_jpeg()
#: Grace Hopper against herself: a match, unless a test changes a field.
GOOD = verify_request(JPEG, {"alice": JPEG})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
