"""The WAL's fsync, apart from the commit that wrote it.

The store's writer connection runs with `synchronous=NORMAL`: in WAL mode its COMMIT appends
the frames to the WAL and returns without an fsync. The store then asks this syncer for an
fdatasync of the WAL file and holds the commit's answers until one that started after the commit
has finished. That is the durability `synchronous=FULL` gives (an fsync of the WAL after each
commit's frames), with the sync moved off the event loop, so that the loop charges the next
batch while the disk writes this one (docs/PERFORMANCE.md).

Why a crash between the write and the sync loses nothing that was answered:
- A WAL frame counts on recovery only with a salt matching the WAL header and a checksum chained
  from the first frame: what recovery finds is a prefix of whole commits, and every answered
  one is in the synced part.
- When the WAL rewinds (every frame was copied into the database file), SQLite writes a new
  header and then frames over the old generation's. NORMAL syncs that header before the frames
  (OFF would not: a later frame could reach the disk first and recovery would take the old
  header and its stale frames as valid).
- The checkpointer's connection runs at FULL: it syncs the WAL before copying frames into the
  database file, and that file before the WAL may rewind, so nothing unsynced is ever the only
  copy.
- While the WAL is new its name is synced too (its directory), as SQLite does for a journal it
  creates; and at start the store syncs the WAL it recovered from, whose last frames a killed
  process may have left in the page cache alone.
- Other connections see a commit before its sync (under FULL they saw it after): readers of
  charging records stop at the store's `durable_seq` (records/_source.py).

The sync thread is written in C (`_walsync.c`: it never needs the GIL, so its news reaches the
loop as soon as the disk is done); `PyWalSync` is the same in Python, for an interpreted
install.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from quotaflow import _native

if TYPE_CHECKING:
    from quotaflow.store._walsync import WalSync


# statx(2) through libc, for the inode alone (see _walsync.c: a stat reads the file's times,
# and on a file system with multigrain timestamps every later write then dirties the inode; on
# ext4 without a journal each sync writes it too). Python 3.11's os module has no statx.
_AT_FDCWD: Final = -100
_STATX_INO: Final = 0x100
_STATX_BUFFER_BYTES: Final = 256  # struct statx, spare fields included
_STATX_FIELDS: Final = struct.Struct("=I28xQ96xII")  # stx_mask, stx_ino, stx_dev_major/minor


def _libc_statx() -> Callable[..., int] | None:
    try:
        found = ctypes.CDLL(None, use_errno=True).statx
    except (AttributeError, OSError, TypeError):  # no statx (glibc < 2.28, not Linux, Windows)
        return None
    found.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
    found.restype = ctypes.c_int
    statx: Callable[..., int] = found
    return statx


_statx = _libc_statx()


def file_identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file at `path`, without reading its times where the kernel
    allows (statx for STATX_INO); os.stat where statx is missing, refused or says nothing of
    the inode. Raises OSError as os.stat does."""
    if _statx is not None:
        buffer = ctypes.create_string_buffer(_STATX_BUFFER_BYTES)
        if _statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_INO, buffer) == 0:
            mask, ino, major, minor = _STATX_FIELDS.unpack_from(buffer)
            if mask & _STATX_INO:
                return os.makedev(major, minor), ino
        else:
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):
                raise OSError(err, os.strerror(err), path)
    st = os.stat(path)
    return st.st_dev, st.st_ino


class PyWalSync:
    """`_walsync.WalSync` in Python: request() numbers a sync, synced() says how far the
    finished ones reach (raising the first failure's OSError, for good), fileno() becomes
    readable after each."""

    def __init__(self, path: str | Path) -> None:
        self.path = os.fsdecode(path)
        self._fd = -1
        self._dev_ino = (0, 0)
        self._open()
        self._notify_r, self._notify_w = os.pipe()
        for fd in (self._notify_r, self._notify_w):
            os.set_blocking(fd, False)
        self._cv = threading.Condition()
        self._requested = 0
        self._synced = 0
        self._error: OSError | None = None
        self._stop = False
        self.syncs = 0
        self.reopens = 0
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="quotaflow-wal", daemon=True
        )
        self._thread.start()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._dev_ino = fd, (st.st_dev, st.st_ino)
        sync_directory(self.path)

    def _sync_once(self) -> None:
        if file_identity(self.path) != self._dev_ino:
            self._open()
            self.reopens += 1
        os.fdatasync(self._fd)

    def _run(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while not self._stop and (self._error or self._requested == self._synced):
                    cv.wait()
                if self._stop:
                    return
                target = self._requested
            try:
                self._sync_once()
            except OSError as exc:
                with cv:
                    self._error = exc
            else:
                with cv:
                    self._synced = target
                    self.syncs += 1
            with contextlib.suppress(BlockingIOError):  # a wake-up is waiting to be read
                os.write(self._notify_w, b"s")

    def request(self) -> int:
        if self._thread is None:
            raise ValueError("WalSync is closed")
        with self._cv:
            self._requested += 1
            self._cv.notify()
            return self._requested

    def synced(self) -> int:
        try:
            while os.read(self._notify_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._cv:
            if self._error is not None:
                raise OSError(self._error.errno, self._error.strerror, self.path)
            return self._synced

    def fileno(self) -> int:
        return self._notify_r

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
        self._thread = None
        for fd in (self._fd, self._notify_r, self._notify_w):
            os.close(fd)


def sync_file(path: str | Path) -> None:
    """fdatasync the file at `path`, if there is one (a WAL that is not there holds nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | Path, data: bytes) -> None:
    """Write `data` to the file at `path` (created or truncated) and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_directory(path: str | Path) -> None:
    """fsync the directory holding `path`, so that the file's name is durable too."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Syncer: TypeAlias = "WalSync | PyWalSync"


def wal_syncer(path: str | Path) -> Syncer:
    """The C syncer where it is built and the compiled modules are in use, else PyWalSync."""
    if _native.MODE == "compiled":
        from quotaflow.store._walsync import WalSync

        return WalSync(os.fspath(path))
    return PyWalSync(path)
