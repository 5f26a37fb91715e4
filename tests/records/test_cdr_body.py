"""The two forms of a charging record's body (store/cdr.py) read back as the same dict."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaflow.store.cdr import (
    SESSION_BODY_KEYS,
    SESSION_RECORD_KEYS,
    SESSION_TAG,
    expand,
    record_of,
)

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=12),
    st.dictionaries(st.text(max_size=6), st.integers(0, 2**40), max_size=3),
)


@given(st.lists(_VALUES, min_size=len(SESSION_BODY_KEYS), max_size=len(SESSION_BODY_KEYS)))
def test_an_array_body_reads_as_the_object_body_it_replaced(values: list[Any]) -> None:
    body = orjson.dumps([SESSION_TAG, *values])
    by_key = dict(zip(SESSION_BODY_KEYS, values, strict=True))
    # The object body's order: seq, at_ms, op, the engine's record (kind first), the rest.
    charged = [k for k in SESSION_BODY_KEYS[3:] if k not in SESSION_RECORD_KEYS]
    wanted = {
        "seq": by_key["seq"],
        "at_ms": by_key["at_ms"],
        "op": by_key["op"],
        "kind": "session",
        **{k: by_key[k] for k in SESSION_RECORD_KEYS},
        **{k: by_key[k] for k in charged},
    }
    got = record_of(body)
    assert got == wanted and list(got) == list(wanted)
    assert record_of(orjson.dumps(wanted)) == wanted  # an object body is read as it is


@pytest.mark.parametrize(
    "doc",
    [[], [SESSION_TAG], [SESSION_TAG, *range(len(SESSION_BODY_KEYS) + 1)], [2, *range(20)]],
)
def test_an_array_of_another_shape_is_refused(doc: list[Any]) -> None:
    with pytest.raises(ValueError, match="not a session record body"):
        expand(doc)
    with pytest.raises(ValueError):
        record_of(orjson.dumps(doc))
