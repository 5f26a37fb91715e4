"""The operation-id table: each id's first answer, kept for the window, to tell a repeat from a
conflict.

An entry is (operation, fingerprint, first result as JSON).

The result is kept encoded, as one string per id, where its dict (with nested dicts and
integers) kept several objects per operation alive for the whole window, for the cyclic
collector to scan and for eviction to free cold. The ledger benchmark's process held 2 million
ids in 865 MB instead of 1,583 MB, at the same throughput (docs/PERFORMANCE.md); a repeat, which
is rare, decodes its own copy. A str, not the bytes orjson returns: those sit in a 1 KiB
allocation that orjson shrinks in place, and keeping millions of them grew the C heap by about a
kilobyte each (the benchmark then spent a fifth of its time in page faults).

The fingerprint is a 128-bit XXH3 hash of the canonical arguments: it only has to tell a
caller's repeat from its own reuse of an id with other content, so it needs no cryptographic
strength, and XXH3 costs 50 ns where BLAKE2b cost 430 (the ledger's hot path hashes every
operation). The operation is kept beside it (one pointer to a name every entry shares) rather
than hashed in.

Entries restored from older snapshots keep the fingerprint they were written with until they age
out: a BLAKE2b digest of the arguments (rows of five fields), or of operation and arguments
together (four fields, no operation kept). In memory the first kind is marked by a prefix byte,
the second by the missing operation.

Oldest first, forgotten from the front. The entries live in a table written in C
(`_idtable.c`, whose comment says why), or in `PyIdTable` where that is not built; the
`OperationIds` wrapper is the same over either.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from xxhash import xxh3_128_digest

from quotaflow import _native

if TYPE_CHECKING:
    from quotaflow.ledger._idtable import IdTable

Result = dict[str, Any]
# (operation or None, fingerprint, first result as JSON; the result itself in the rare case
# that orjson cannot encode it, a number past 64 bits)
Entry = tuple[str | None, bytes, str | Result]

SCHEME: Final = "xxh3-128"  # the last field of a snapshot row written by this release
FINGERPRINT_LEN: Final = 16
_COMPACT_AFTER: Final = 4096  # forgotten ids at the front of the id list before it is cut
_BLAKE2B: Final = b"\x01"  # prefix of a fingerprint restored from a snapshot row of five fields


def digest(content: bytes) -> bytes:
    return xxh3_128_digest(content)


def blake2b_digest(content: bytes) -> bytes:
    """The fingerprint of entries from snapshots written before XXH3 (rows of five fields)."""
    return hashlib.blake2b(content, digest_size=16).digest()


def legacy_digest(op: str, content: bytes) -> bytes:
    """The fingerprint of entries from snapshots written before the operation was kept apart."""
    return hashlib.blake2b(op.encode() + content, digest_size=16).digest()


class PyIdTable:
    """The id table's storage in Python, where the C one (`_idtable.c`) is not built: the same
    methods and the same order. A plain dict holds the entries; a list holds the ids in the
    order they came, and a deque the runs of ids that came at the same clock value, so an entry
    carries no time of its own. (An OrderedDict costs a linked node per entry; forgetting from
    the front of a plain dict through next(iter()) is quadratic, as each call skips the slots
    deleted since the last resize.)"""

    def __init__(self, entries_max: int) -> None:
        if entries_max < 0:
            raise ValueError("entries_max must be at least 0")
        self.entries_max = entries_max
        self.entries: dict[str, Entry] = {}
        # The ids oldest first: the live ones are _ids[_head:]; the front is cut off now and
        # then (a list appends and indexes natively in compiled code, a deque by method calls).
        self._ids: list[str] = []
        self._head = 0
        # Runs of ids that came at the same clock value, oldest first: the closed ones as
        # [clock value, count], the newest (still growing) in two plain integers.
        self._runs: deque[list[int]] = deque()
        self._open_at = 0
        self._open_count = 0
        self._added = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def added(self) -> int:
        return self._added

    @added.setter
    def added(self, value: int) -> None:
        if value < len(self.entries):
            raise ValueError("added cannot be less than the ids kept")
        self._added = value

    def get(self, op_id: str) -> Entry | None:
        return self.entries.get(op_id)

    def prefetch(self, op_id: str) -> None:
        pass  # the C table's way to hide a cache miss; nothing to gain here

    def add(
        self,
        op_id: str,
        op: str | None,
        fingerprint: bytes,
        answer: str | bytes | Result,
        at_ms: int,
    ) -> None:
        if op_id in self.entries:
            raise KeyError("operation id already remembered")
        # JSON's UTF-8 is kept as a str (see the module's docstring on orjson's bytes)
        self.entries[op_id] = (
            op,
            fingerprint,
            answer.decode() if isinstance(answer, bytes) else answer,
        )
        self._ids.append(op_id)
        self._added += 1
        if self._open_count and self._open_at == at_ms:
            self._open_count += 1
        else:
            if self._open_count:
                self._runs.append([self._open_at, self._open_count])
            self._open_at = at_ms
            self._open_count = 1
        while len(self.entries) > self.entries_max:
            self._drop_oldest()

    def _forget_first(self) -> None:
        """Forget the oldest id (its run is counted down by the caller)."""
        del self.entries[self._ids[self._head]]
        self._head += 1
        if self._head >= _COMPACT_AFTER and 2 * self._head >= len(self._ids):
            del self._ids[: self._head]  # moves the rest, at most as many as were forgotten
            self._head = 0

    def _drop_oldest(self) -> None:
        self._forget_first()
        if self._runs:
            first = self._runs[0]
            first[1] -= 1
            if not first[1]:
                self._runs.popleft()
        else:
            self._open_count -= 1

    def prune(self, horizon_ms: int) -> int:
        runs = self._runs
        dropped = 0
        while runs and runs[0][0] < horizon_ms:
            count = runs.popleft()[1]
            for _ in range(count):
                self._forget_first()
            dropped += count
        if not runs and self._open_count and self._open_at < horizon_ms:
            for _ in range(self._open_count):
                self._forget_first()
            dropped += self._open_count
            self._open_count = 0
        return dropped

    def rows(self, start: int = 0) -> list[tuple[str, str | None, bytes, str | Result, int]]:
        # Each row made may start a collection, whose callbacks or finalizers could prune the
        # table under the walk (the C table does the same).
        skip = max(0, start - (self._added - len(self.entries)))
        if skip >= len(self.entries):
            return []  # none: no walk over every id to find it out
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._rows(skip)
        finally:
            if collecting:
                gc.enable()

    def _rows(self, skip: int) -> list[tuple[str, str | None, bytes, str | Result, int]]:
        out: list[tuple[str, str | None, bytes, str | Result, int]] = []
        order = iter(self._ids[self._head :])
        runs = list(self._runs)
        if self._open_count:
            runs.append([self._open_at, self._open_count])
        for at, count in runs:
            for _ in range(count):
                op_id = next(order)
                if skip:
                    skip -= 1
                    continue
                op, fingerprint, answer = self.entries[op_id]
                out.append((op_id, op, fingerprint, answer, at))
        return out

    def ids(self) -> list[str]:
        return self._ids[self._head :]


def _storage(entries_max: int) -> IdTable | PyIdTable:
    """The C table where it is built and the compiled modules are in use, else the Python one."""
    if _native.MODE == "compiled":
        from quotaflow.ledger._idtable import IdTable

        return IdTable(entries_max)
    return PyIdTable(entries_max)


class OperationIds:
    def __init__(self, entries_max: int, storage: IdTable | PyIdTable | None = None) -> None:
        """At most `entries_max` ids (0: nothing is remembered; below 0: ValueError), kept in
        `storage`, by default the C table where it is in use."""
        table = _storage(entries_max) if storage is None else storage
        self.storage = table
        # Bound once: compiled code calls a method of the union type by name (about 450
        # instructions), a bound method directly; three calls per charge.
        self._get: Callable[[str], Entry | None] = table.get
        self._prefetch: Callable[[str], None] = table.prefetch
        self._add: Callable[[str, str | None, bytes, str | bytes | Result, int], None] = table.add

    @property
    def entries_max(self) -> int:
        return self.storage.entries_max

    def __len__(self) -> int:
        return len(self.storage)

    def span(self) -> tuple[int, int]:
        """The numbers of the oldest id kept and of the next to come: every id is numbered in
        the order it came, from the table's beginning (kept across snapshots)."""
        added = self.storage.added
        return added - len(self.storage), added

    def get(self, op_id: str) -> Entry | None:
        return self._get(op_id)

    def prefetch(self, op_id: str) -> None:
        """A `get` of this id follows soon: start loading what it reads (it then waits less
        on memory, in a table of millions of ids)."""
        self._prefetch(op_id)

    def ids(self) -> list[str]:
        """The remembered ids, oldest first."""
        return self.storage.ids()

    @staticmethod
    def answer(entry: Entry) -> Result:
        """The first result of an entry, a copy of its own (the caller may change it)."""
        kept = entry[2]
        if isinstance(kept, str):
            result: Result = orjson.loads(kept)
            return result
        return kept

    def same(self, entry: Entry, op: str, fingerprint: bytes, content: bytes) -> bool:
        """Whether `op` with this content is what the entry's id was first used for."""
        kept_op, kept = entry[0], entry[1]
        if kept_op is None:
            return kept == legacy_digest(op, content)
        if kept_op != op:
            return False
        if len(kept) == FINGERPRINT_LEN:
            return kept == fingerprint
        return kept[1:] == blake2b_digest(content)

    def add(
        self,
        op_id: str,
        op: str | None,
        fingerprint: bytes,
        answer: str | bytes | Result,
        now_ms: int,
    ) -> None:
        """Remember a new id (not in the table) at clock value `now_ms`, with its first result
        as JSON (str, or bytes of UTF-8: a get gives it back as str); the oldest goes when the
        table is full."""
        self._add(op_id, op, fingerprint, answer, now_ms)

    def prune(self, horizon_ms: int) -> int:
        """Forget ids from the front while they came before `horizon_ms`; how many went.
        Stops at the first that came later (deterministic given the clock values)."""
        return self.storage.prune(horizon_ms)

    def to_json(self, raw: bool = False, start: int = 0) -> list[list[Any]]:
        """[op_id, fingerprint hex, result, clock value, operation, scheme], oldest first, of
        the ids numbered `start` or later (`span`); an entry restored from an older snapshot is
        written back as it was read. With `raw` the results are left encoded
        (`orjson.Fragment`), for a snapshot that orjson writes."""
        out: list[list[Any]] = []
        for op_id, op, fingerprint, answer, at in self.storage.rows(start):
            result: Any = answer
            if isinstance(answer, str):
                result = orjson.Fragment(answer) if raw else orjson.loads(answer)
            if len(fingerprint) == FINGERPRINT_LEN and op is not None:
                out.append([op_id, fingerprint.hex(), result, at, op, SCHEME])
            else:
                out.append([op_id, fingerprint[-FINGERPRINT_LEN:].hex(), result, at, op])
        return out

    def dump(self, start: int, fd: int) -> int:
        """Write `to_json`'s rows of the ids numbered `start` or later (raw: as they would be
        read back) to the file descriptor `fd`, as a JSON array; how many. The C table writes
        them from its records, without a Python object per id (a snapshot's ids file)."""
        storage = self.storage
        if isinstance(storage, PyIdTable):
            rows = self.to_json(True, start)
            body = orjson.dumps(rows)
            written = 0
            while written < len(body):
                written += os.write(fd, body[written:])
            return len(rows)
        return storage.dump(start, fd, orjson.dumps, SCHEME)

    @classmethod
    def from_json(
        cls, rows: list[list[Any]], entries_max: int, end: int | None = None
    ) -> OperationIds:
        """From `to_json`'s rows, or those of older snapshots (see the module's docstring);
        `end`: the number the next id takes (`span`), where the rows were numbered."""
        table = cls(entries_max)
        for row in rows:
            fingerprint = bytes.fromhex(row[1])
            op = sys.intern(row[4]) if len(row) > 4 and row[4] is not None else None
            if op is not None:
                if len(row) < 6:
                    fingerprint = _BLAKE2B + fingerprint
                elif row[5] != SCHEME:
                    raise ValueError(f"operation id fingerprints of unknown scheme {row[5]!r}")
            table.add(row[0], op, fingerprint, orjson.dumps(row[2]), row[3])
        if end is not None:
            table.storage.added = end
        return table
