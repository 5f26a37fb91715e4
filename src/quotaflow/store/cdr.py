"""The body of a charging record in the cdr table, and what its readers make of it.

A body is JSON. Most records are an object: the caller's `record` fields, then what the
operation posted. The record of a session step (one per CCR-U that reports usage, the bulk of
the table) is an array instead: SESSION_TAG, then its values in a fixed order. It carries no
keys to encode, to write to the WAL and to copy again at checkpoint: 192 bytes against 437, and
orjson takes less than half the time. `record_of` turns either into the same dict, in the key
order an object body had, so exporters and the API see no difference.
"""

from __future__ import annotations

import operator
from typing import Any, Final

import orjson

SESSION_TAG: Final = 1
# What the engine hands the store for a session step (args["record"]), in the order of
# SESSION_RECORD_KEYS. The interface and the cause come from the session's meta, as given.
SessionRecord = tuple[Any, str, int, int, int | None, int | None, bool, Any, str | None]
SESSION_RECORD_KEYS: Final = (
    "interface",
    "session_id",
    "request_number",
    "interval_start_ms",
    "input_octets",
    "output_octets",
    "final",
    "cause",
    "plan",
)
# What the store adds to a charge's record: from its arguments, then from the ledger's result.
_CHARGED_KEYS: Final = (
    "subscriber_id",
    "unit",
    "rating_group",
    "used_units",
    "posted_units",
    "unpaid_units",
    "drawn",
    "cost_micros",
)
# The array body: SESSION_TAG, then these values (the store's part first, then the engine's).
SESSION_BODY_KEYS: Final = ("seq", "at_ms", "op", *_CHARGED_KEYS, *SESSION_RECORD_KEYS)
# Where the SQL filters of the records API find these in an array body.
SESSION_ID_INDEX: Final = 1 + SESSION_BODY_KEYS.index("session_id")
# The dict order of an object body: seq, at_ms, op, the record's fields, then the rest.
_ORDER: Final = ("seq", "at_ms", "op", "kind", *SESSION_RECORD_KEYS, *_CHARGED_KEYS)
assert _ORDER[:4] == ("seq", "at_ms", "op", "kind") and set(_ORDER) - {"kind"} == set(
    SESSION_BODY_KEYS
)


def session_fields(record: SessionRecord) -> dict[str, Any]:
    """A session record as the object the engine passed before records became arrays."""
    return {"kind": "session", **dict(zip(SESSION_RECORD_KEYS, record, strict=True))}


# _ORDER after its first four keys, and where each sits in an array body: `expand` builds the
# dict in its final order at once (the exporter expands every session record; building it in
# body order and then reordering cost 2.3 us a record with the decoding, this 1.6).
_AFTER_KIND: Final = _ORDER[4:]
_PICK_AFTER_KIND: Final = operator.itemgetter(
    *(1 + SESSION_BODY_KEYS.index(key) for key in _AFTER_KIND)
)
_BODY_LEN: Final = 1 + len(SESSION_BODY_KEYS)


def expand(doc: list[Any]) -> dict[str, Any]:
    """An array body (decoded) as the record's dict; ValueError for an unknown shape."""
    if len(doc) != _BODY_LEN or doc[0] != SESSION_TAG:
        raise ValueError(f"not a session record body: {doc[:3]!r}")
    found = {"seq": doc[1], "at_ms": doc[2], "op": doc[3], "kind": "session"}
    found.update(zip(_AFTER_KIND, _PICK_AFTER_KIND(doc), strict=True))
    return found


def record_of(body: bytes | str) -> dict[str, Any]:
    """A charging record from the body stored in the cdr table, whichever form it has."""
    doc = orjson.loads(body)
    if type(doc) is list:
        return expand(doc)
    if type(doc) is not dict:
        raise ValueError(f"a charging record body is an object or an array, not {doc!r}")
    return doc
