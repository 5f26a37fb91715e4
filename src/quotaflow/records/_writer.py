"""A rotating, hash-chained record file writer with a persisted position.

Records are appended to `cdr-<first seq>.<fmt>.part` and fsynced, then the position
(`position.json`: last seq and chain head) is replaced atomically. On rotation (size, age or
record count) the part file is renamed to `cdr-<first>-<last>.<fmt>` and its signed manifest
written next to it. After a crash the part file is the truth: a torn last line is cut off, the
position is taken from whichever of file and position.json is further, and a finished file
left without its manifest gets one. Blocking I/O only: the exporter runs this on a thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow.records._chain import (
    FORMATS,
    GENESIS,
    MANIFEST_SUFFIX,
    PART_SUFFIX,
    MalformedLine,
    SealedFile,
    content_digest,
    line_hash,
    pack_entry,
    sign_manifest,
)
from quotaflow.store.base import lock_folder
from quotaflow.store.walsync import write_synced

log = logging.getLogger("quotaflow.records")

POSITION_FILE: Final = "position.json"


@dataclass(slots=True)
class Rotation:
    """When a file is sealed: whichever limit is reached first."""

    size_bytes_max: int = 64 * 1024 * 1024
    age_s_max: float = 3600.0
    records_max: int = 100_000

    def __post_init__(self) -> None:
        assert self.size_bytes_max > 0 and self.age_s_max > 0 and self.records_max > 0


@dataclass(slots=True)
class _Open:
    path: Path
    prev_head: str
    created_ms: int
    count: int = 0
    size_bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    entries: bytearray = field(default_factory=bytearray)
    # SHA-256 of the bytes written so far, for the manifest: sealing then reads nothing back.
    file_hash: Any = field(default_factory=hashlib.sha256)


# This loop runs compiled, on the exporter's thread, and compiled code never offers the GIL
# to another thread by itself: a batch of 5,000 records held the event loop for 33 ms. Every
# this many lines it lets go (about 0.3 ms of work), so the loop waits no longer than for any
# interpreted thread (the 5 ms switch interval).
YIELD_EVERY_LINES: Final = 64


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fsync_path(path: Path) -> None:
    """fsync a folder (its entries: a rename, a new file) or a file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_to_counted(f: BinaryIO, state: _Open) -> None:
    """Cut the open file (`f`, opened to append) back to the lines the writer counted: an
    earlier write may have failed after some of its bytes reached the file (or all of them, and
    only the fsync failed), and those lines are written again. A shorter file is not padded."""
    size_bytes = f.tell()
    if size_bytes < state.size_bytes:
        raise RuntimeError(f"{state.path} is shorter than the lines written to it")
    if size_bytes > state.size_bytes:
        f.truncate(state.size_bytes)
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, data)
    os.replace(tmp, path)


class ChainWriter:
    """Appends records of one format to rotating chained files in `folder`."""

    def __init__(
        self, folder: str | Path, fmt: str, key: Ed25519PrivateKey, rotation: Rotation
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown record format {fmt!r}; known: {sorted(FORMATS)}")
        self.folder = Path(folder)
        self.format = FORMATS[fmt]
        self.key = key
        self.rotation = rotation
        self.last_seq = 0
        self.head = GENESIS
        self.written = 0
        self.sealed_files = 0
        self._open: _Open | None = None
        # Files sealed on disk whose manifest could not be written yet (data path, its state,
        # the chain head and the clock at sealing); written before anything else is.
        self._unsigned: list[tuple[Path, _Open, str, int]] = []
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Load the position, repair what a crash left behind. Call once before appending."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        pos_path = self.folder / POSITION_FILE
        if pos_path.exists():
            pos = orjson.loads(pos_path.read_bytes())
            self.last_seq, self.head = int(pos["last_seq"]), str(pos["head"])
        for data in sorted(self.folder.glob(f"cdr-*-*.{self.format.name}")):
            if not data.with_name(data.name + MANIFEST_SUFFIX).exists():
                self._seal_existing(data)
        parts = sorted(self.folder.glob(f"cdr-*.{self.format.name}{PART_SUFFIX}"))
        assert len(parts) <= 1, f"more than one open record file in {self.folder}: {parts}"
        if parts:
            self._reopen(parts[0])

    def _lock(self) -> None:
        """Hold the folder's lock while open: a second writer, say an exporter process started
        while the one before it still finishes a write, is refused at recovery."""
        if self._lock_fd is not None:
            return
        self._lock_fd = lock_folder(self.folder, f"another exporter is writing to {self.folder}")

    def close(self) -> None:
        """Let the folder go (the files are complete after every append)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan(self, path: Path) -> tuple[_Open, bool]:
        """Read a file this writer wrote: its state, and whether its last line was torn."""
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines.pop() != b""  # a complete file ends with a newline
        header = self.format.header
        state = _Open(path, GENESIS, _now_ms())
        kept = 0
        if header is not None and lines and lines[0] == header:
            kept = len(header) + 1
            lines = lines[1:]
        for i, line in enumerate(lines):
            seq, prev, _ = self.format.parse(line)
            if i == 0:
                state.prev_head, state.first_seq = prev, seq
            state.count += 1
            state.last_seq = seq
            state.entries += pack_entry(seq, content_digest(self.format, line, prev))
            kept += len(line) + 1
        state.size_bytes = kept
        state.file_hash = hashlib.sha256(raw[:kept])
        state.created_ms = int(path.stat().st_mtime * 1000)
        return state, torn

    def _reopen(self, path: Path) -> None:
        header = self.format.header
        if (
            header is not None
            and path.stat().st_size <= len(header) + 1
            and (header + b"\n").startswith(path.read_bytes())
        ):
            # Not even its header made it to disk (a crash or a failed first write): no
            # records, so nothing to keep; the next record starts a new file.
            path.unlink()
            _fsync_path(self.folder)
            return
        try:
            state, torn = self._scan(path)
        except MalformedLine as exc:
            raise RuntimeError(f"open record file {path} is damaged: {exc}") from None
        if torn:
            log.warning("cutting a torn last line", extra={"file": str(path)})
            with open(path, "r+b") as f:
                f.truncate(state.size_bytes)
                os.fsync(f.fileno())
        if state.count:
            if state.last_seq >= self.last_seq:
                self.last_seq = state.last_seq
                self.head = self._last_line_hash(path)
        else:
            state.prev_head = self.head
        self._open = state

    def _last_line_hash(self, path: Path) -> str:
        lines = path.read_bytes().split(b"\n")
        return line_hash(lines[-2])

    def _seal_existing(self, data: Path) -> None:
        state, torn = self._scan(data)
        assert not torn, f"finished record file {data} ends in a torn line"
        self._write_manifest(data, state, self._last_line_hash(data))

    # ------------------------------------------------------------------ writing

    def append(self, records: list[dict[str, Any]], now_ms: int | None = None) -> int:
        """Write the records after the position, durably; returns how many were new."""
        fresh = [r for r in records if r["seq"] > self.last_seq]
        if not fresh:
            return 0
        self._sign_pending()
        assert all(a["seq"] < b["seq"] for a, b in itertools.pairwise(fresh))
        now = _now_ms() if now_ms is None else now_ms
        done = 0
        while done < len(fresh):
            state = self._open or self._start(fresh[done]["seq"], now)
            done += self._write_lines(state, fresh[done:])
            if self._due(state, now):
                self._seal(now)
        self._save_position()
        return len(fresh)

    def _start(self, first_seq: int, now_ms: int) -> _Open:
        path = self.folder / f"cdr-{first_seq:012d}.{self.format.name}{PART_SUFFIX}"
        state = _Open(path, self.head, now_ms, first_seq=first_seq)
        header = b"" if self.format.header is None else self.format.header + b"\n"
        with open(path, "wb") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(self.folder)  # the file's name too: the position will count its lines
        state.size_bytes = len(header)
        state.file_hash.update(header)
        self._open = state
        return state

    def _write_lines(self, state: _Open, records: list[dict[str, Any]]) -> int:
        """Write as many records as fit before a size or count limit; returns how many."""
        out = bytearray()
        entries = bytearray()  # the state's only once the lines are written
        head = self.head
        rot = self.rotation
        fmt = self.format
        n = 0
        while n < len(records) and (
            state.count + n == 0  # a file holds at least one record, whatever the limits
            or (
                state.count + n < rot.records_max
                and state.size_bytes + len(out) < rot.size_bytes_max
            )
        ):
            r = records[n]
            line = fmt.encode(r, head)
            entries += pack_entry(r["seq"], content_digest(fmt, line, head))
            head = line_hash(line)
            out += line
            out += b"\n"
            n += 1
            if n % YIELD_EVERY_LINES == 0:
                time.sleep(0)  # let the event loop's thread have the GIL (see YIELD_EVERY_LINES)
        if n == 0:
            return 0
        with open(state.path, "ab") as f:
            _cut_to_counted(f, state)
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        state.entries += entries
        state.file_hash.update(out)
        if state.count == 0:
            state.first_seq = records[0]["seq"]
        state.count += n
        state.size_bytes += len(out)
        state.last_seq = records[n - 1]["seq"]
        self.head, self.last_seq = head, state.last_seq
        self.written += n
        return n

    def _due(self, state: _Open, now_ms: int) -> bool:
        r = self.rotation
        return (
            state.count >= r.records_max
            or state.size_bytes >= r.size_bytes_max
            or (state.count > 0 and now_ms - state.created_ms >= r.age_s_max * 1000)
        )

    def rotate_if_due(self, now_ms: int | None = None) -> bool:
        """Seal the open file if it is old enough (called on the exporter's idle ticks)."""
        now = _now_ms() if now_ms is None else now_ms
        self._sign_pending()
        if self._open is None or not self._due(self._open, now):
            return False
        self._seal(now)
        return True

    def seal(self) -> bool:
        """Seal the open file now, whatever its size (on demand, e.g. before shipping)."""
        self._sign_pending()
        if self._open is None or self._open.count == 0:
            return False
        self._seal(_now_ms())
        return True

    def _seal(self, now_ms: int) -> None:
        state = self._open
        assert state is not None and state.count > 0
        final = self.folder / f"cdr-{state.first_seq:012d}-{state.last_seq:012d}.{self.format.name}"
        with open(state.path, "ab") as f:  # uncounted lines are sent again, to the next file
            _cut_to_counted(f, state)
        # The position first: once renamed, a restart no longer reads this file's lines as
        # the open file's, so it must not ask the source for them again.
        self._save_position()
        os.replace(state.path, final)
        # Sealed on disk from here, whatever follows fails (the folder's fsync, the manifest):
        # the next records go to a new file, and what is left is done before anything else.
        self._open = None
        self.sealed_files += 1
        log.info("record file sealed", extra={"file": final.name, "records": state.count})
        self._unsigned.append((final, state, self.head, now_ms))
        self._sign_pending()

    def _sign_pending(self) -> None:
        """Make sealed files durable and signed, oldest first: the folder's fsync (their new
        names), then each one's manifest."""
        while self._unsigned:
            data, state, head, sealed_ms = self._unsigned[0]
            _fsync_path(self.folder)
            self._write_manifest(data, state, head, sealed_ms)
            del self._unsigned[0]

    def _write_manifest(
        self, data: Path, state: _Open, head: str, now_ms: int | None = None
    ) -> None:
        size_bytes = data.stat().st_size
        if size_bytes == state.size_bytes:
            digest = state.file_hash.hexdigest()
        else:  # not only what this writer wrote (a failed write left part of a line): as it is
            digest = hashlib.sha256(data.read_bytes()).hexdigest()
        sealed = SealedFile(
            file=data.name,
            format=self.format.name,
            count=state.count,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            prev_head=state.prev_head,
            head=head,
            file_sha256=digest,
            size_bytes=size_bytes,
            created_ms=state.created_ms,
            sealed_ms=_now_ms() if now_ms is None else now_ms,
            entries=bytes(state.entries),
        )
        write_atomic(data.with_name(data.name + MANIFEST_SUFFIX), sign_manifest(sealed, self.key))
        _fsync_path(self.folder)

    def _save_position(self) -> None:
        doc = {"last_seq": self.last_seq, "head": self.head, "format": self.format.name}
        write_atomic(self.folder / POSITION_FILE, orjson.dumps(doc))

    def status(self) -> dict[str, Any]:
        state = self._open
        return {
            "format": self.format.name,
            "folder": str(self.folder),
            "last_seq": self.last_seq,
            "head": self.head,
            "written": self.written,
            "sealed_files": self.sealed_files,
            "manifests_pending": len(self._unsigned),
            "open_file": None if state is None else state.path.name,
            "open_records": 0 if state is None else state.count,
        }
