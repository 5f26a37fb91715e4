"""The files a snapshot is kept in, beside the database in the data directory.

`snapshot-<seq>.json` holds the ledger's state at `seq` (the table `snapshot_file` names the
latest, with its length). The remembered operation ids, most of a busy server's state, are not
in it: they are kept in `ids-<seq>.json` files, each holding the ids that came between two
snapshots (a segment), and the snapshot lists the segments that still hold ids it keeps.

Why: a snapshot that held every remembered id wrote the whole table each time. At 30k CCR/s
the table reaches its 2,000,000 ids in about a minute, and then every snapshot (one each 500,000
operations, about 15 s) serialised and wrote some 700 MB, in a child sharing the server's core
(docs/PERFORMANCE.md, session 22). Now a snapshot writes only the ids that came since the last
stored one; a segment is deleted once the ids it holds have all aged out of the table.

Ids are numbered in the order they came, from the table's beginning (`OperationIds.span`); a
segment is `[file name, number of its first id, how many]`, and the snapshot's
`idempotency_span` says which numbers the table held. A snapshot whose `idempotency` is a list
(written before session 22, or by `Ledger.snapshot` itself) holds all of them inline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from quotaflow.ledger._opids import OperationIds
from quotaflow.store.base import SnapshotFileError

log = logging.getLogger(__name__)

SNAPSHOT_FILE_PREFIX: Final = "snapshot-"
SNAPSHOT_FILE_SUFFIX: Final = ".json"
IDS_FILE_PREFIX: Final = "ids-"
IDS_FILE_SUFFIX: Final = ".json"

Segment = list[Any]  # [file name, number of its first id, how many ids it holds]


def snapshot_file_name(seq: int) -> str:
    """The file a snapshot of the state at `seq` is kept in, in the data directory."""
    return f"{SNAPSHOT_FILE_PREFIX}{seq}{SNAPSHOT_FILE_SUFFIX}"


def ids_file_name(seq: int) -> str:
    """The file of the ids that the snapshot at `seq` was the first to store."""
    return f"{IDS_FILE_PREFIX}{seq}{IDS_FILE_SUFFIX}"


def file_seq(
    name: str, prefix: str = SNAPSHOT_FILE_PREFIX, suffix: str = SNAPSHOT_FILE_SUFFIX
) -> int:
    """The seq in a name made by `snapshot_file_name` (or `ids_file_name` with its prefix and
    suffix); -1 for any other name."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return -1
    seq = name[len(prefix) : -len(suffix)]
    return int(seq) if seq.isdigit() and seq.isascii() else -1


@dataclass
class IdsStored:
    """What the stored snapshot keeps of the id table: the number after its last id (the next
    snapshot's segment starts there) and the segments it lists."""

    end: int = 0
    segments: list[Segment] = field(default_factory=list)


@dataclass
class IdsPlan:
    """One snapshot's share of the ids: its new segment (the ids numbered from `start`, in a
    file of its own) unless none came, and what is stored once it is."""

    start: int
    new: Segment | None
    stored: IdsStored


def plan_ids(stored: IdsStored, span: tuple[int, int], seq: int) -> IdsPlan:
    """The segments of a snapshot at `seq` of a table holding ids numbered span[0]..span[1]-1,
    after the stored snapshot's. Pure: the forked child and the server compute the same."""
    head, end = span
    if stored.end > end:  # a table numbered anew (not made by this store): all of it again
        stored = IdsStored()
    kept = [s for s in stored.segments if s[1] + s[2] > head]
    first = max(stored.end, head)
    new = [ids_file_name(seq), first, end - first] if end > first else None
    return IdsPlan(first, new, IdsStored(end, [*kept, new] if new else kept))


def split_ids(doc: dict[str, Any], plan: IdsPlan) -> list[Any]:
    """Take the new segment's rows out of a `Ledger.snapshot(ids_from=plan.start)` document,
    which then lists the segments instead."""
    rows: list[Any] = doc["idempotency"]
    doc["idempotency"] = {"segments": plan.stored.segments}
    return rows


def write_ids(path: Path, ids: OperationIds, start: int) -> int:
    """A new segment's file: the ids numbered `start` or later, written straight from the
    table and fsynced; how many."""
    with open(path, "wb") as f:
        count = ids.dump(start, f.fileno())
        os.fsync(f.fileno())
    return count


def read_snapshot(folder: Path, name: str, size: int) -> bytes:
    path = folder / name
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotFileError(
            f"snapshot file {path} is missing; the journal it covers was deleted with it,"
            " so the store cannot open without it (restore it from a backup)"
        ) from None
    if len(body) != size:
        raise SnapshotFileError(
            f"snapshot file {path} holds {len(body)} bytes where {size} were written"
        )
    return body


def load_ids(folder: Path, doc: dict[str, Any]) -> IdsStored:
    """Put the rows of the segments a snapshot lists back into it, as `Ledger.restore` reads
    them; what is stored as of this snapshot. A missing or cut segment, or segments that do
    not cover the span, raise SnapshotFileError."""
    ids = doc["idempotency"]
    if isinstance(ids, list):
        return IdsStored()  # inline: the next snapshot writes them all as its segment
    head, end = doc["idempotency_span"]
    segments: list[Segment] = ids["segments"]
    rows: list[Any] = []
    at = head
    for name, first, count in segments:
        if file_seq(name, IDS_FILE_PREFIX, IDS_FILE_SUFFIX) < 0:  # a name, never a path
            raise SnapshotFileError(f"snapshot lists {name!r}, which is no ids file's name")
        path = folder / name
        if first > at:
            raise SnapshotFileError(f"ids file {path} starts at id {first}, not {at}")
        try:
            held = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise SnapshotFileError(
                f"ids file {path} is missing; the snapshot that lists it cannot be read"
                " without it (restore it from a backup)"
            ) from None
        except orjson.JSONDecodeError:
            raise SnapshotFileError(f"ids file {path} is cut or damaged") from None
        if not isinstance(held, list) or len(held) != count:
            raise SnapshotFileError(f"ids file {path} does not hold the {count} ids listed")
        rows.extend(held[at - first :])
        at = max(at, first + count)
    if at != end:
        raise SnapshotFileError(f"the ids files end at id {at}, not {end}")
    doc["idempotency"] = rows
    return IdsStored(end, segments)


def drop_older(folder: Path, named: str, stored: IdsStored) -> None:
    """Delete the snapshot files older than the one the database names, and the ids files
    older than it that it does not list. A newer file is left: renamed into place by a store
    that stopped before recording it (the next snapshot outdates it), or another process's on
    this folder, just stored."""
    named_seq = file_seq(named)
    listed = {s[0] for s in stored.segments}
    doomed = [
        p
        for p in folder.glob(f"{SNAPSHOT_FILE_PREFIX}*{SNAPSHOT_FILE_SUFFIX}")
        if 0 <= file_seq(p.name) < named_seq
    ] + [
        p
        for p in folder.glob(f"{IDS_FILE_PREFIX}*{IDS_FILE_SUFFIX}")
        if 0 <= file_seq(p.name, IDS_FILE_PREFIX, IDS_FILE_SUFFIX) < named_seq
        and p.name not in listed
    ]
    for path in doomed:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # kept: it only takes room
            log.warning("old snapshot file not removed", extra={"error": str(exc)})
