"""The journal's batch format: what one group commit writes to a row of the `journal` table.

A batch is the operations applied since the last commit, consecutive sequence numbers from the
row's `first_seq` to its `last_seq`, written as one JSON object of parallel arrays:

    {"v": 2, "ops": [name, ...], "ids": [op_id or null, ...], "now_ms": [clock, ...],
     "refused": [index, ...], "args": [canonical arguments, ...]}

`refused` lists the (rare) positions of operations that were refused but voided lapsed
reservations on their way, so replay repeats that part. The arguments are the canonical JSON the
ledger already produced, appended to one buffer as each operation is applied: no object per
operation outlives its `add`, where a row tuple per operation kept its arguments, a wrapper and
a tuple alive until the commit and freed them cold afterwards.

Rows written before this format (an array of [seq, op, op_id, args, now_ms, refused]) are read
as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import orjson

FORMAT: Final = 2

# One journaled operation as replay sees it: (seq, op, op_id, args, now_ms, refused).
Replayed = tuple[int, str, str | None, dict[str, Any], int, int]


class Batch:
    """Operations applied since the last commit, encoded as they come."""

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.ops: list[str] = []
        self.ids: list[str | None] = []
        self.now_ms: list[int] = []
        self.refused: list[int] = []
        self._args = bytearray(b"[")
        self._encoded = False

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.ops) - 1

    def add(self, op: str, op_id: str | None, content: bytes, now_ms: int, refused: bool) -> None:
        """Append the next operation; `content` is its arguments as JSON."""
        assert not self._encoded, "an encoded batch takes no more operations"
        if refused:
            self.refused.append(len(self.ops))
        self.ops.append(op)
        self.ids.append(op_id)
        self.now_ms.append(now_ms)
        args = self._args
        args += content
        args += b","

    def encode(self) -> bytes:
        """The batch as its journal row's `records` (not empty: it has operations)."""
        assert self.ops, "an empty batch is not written"
        args = self._args
        if not self._encoded:  # the trailing comma becomes the closing bracket
            args[-1] = 0x5D
            self._encoded = True
        return orjson.dumps(
            {
                "v": FORMAT,
                "ops": self.ops,
                "ids": self.ids,
                "now_ms": self.now_ms,
                "refused": self.refused,
                "args": orjson.Fragment(bytes(args)),
            }
        )


def decode(first_seq: int, last_seq: int, records: bytes) -> Iterator[Replayed]:
    """The operations of one journal row, in order, whichever format wrote it."""
    doc = orjson.loads(records)
    if isinstance(doc, list):  # the format before batches were encoded as they came
        for seq, op, op_id, args, now_ms, refused in doc:
            yield seq, op, op_id, args, now_ms, refused
        return
    if doc.get("v") != FORMAT:
        raise ValueError(f"journal row {last_seq}: unknown batch format {doc.get('v')!r}")
    ops, ids, clocks, all_args = doc["ops"], doc["ids"], doc["now_ms"], doc["args"]
    count = last_seq - first_seq + 1
    if not len(ops) == len(ids) == len(clocks) == len(all_args) == count:
        raise ValueError(f"journal row {last_seq}: arrays do not hold {count} operations")
    refused = set(doc["refused"])
    for i in range(count):
        yield first_seq + i, ops[i], ids[i], all_args[i], clocks[i], 1 if i in refused else 0
