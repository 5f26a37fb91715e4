"""The WAL syncer's fdatasync, beside a bare fdatasync loop on the same disk in the same run.

Each round writes 8 KiB into a file already 40 MiB long (as SQLite overwrites a rewound WAL),
one file per way, then waits for a sync that covers it: through the C syncer
(`_walsync.WalSync`), through the Python one (`PyWalSync`, the interpreted install's), as a bare
`os.fdatasync` on the writer's own thread (the ceiling), and as `os.stat` of the path then
`os.fdatasync` on that thread (what the C syncer did before session 20). The three take turns of
ROUNDS_PER_TURN rounds, so drift of the disk touches each alike.

Why it is here: a syncer that checks its path with stat(2) reads the file's times, and on a file
system with multigrain timestamps (Linux 6.13 and later: ext4, XFS, tmpfs, ...) the next write
then stamps a fine-grained mtime and the inode is dirty at every commit; on ext4 without a
journal each fdatasync then writes it as well (docs/PERFORMANCE.md, session 20). The C syncer
asks statx(2) for the inode alone, and so does PyWalSync through libc (Python 3.11's os module
has no statx). The two bare ways differ by the stat alone; the syncers add their thread's
hand-over (the Python one also waits for the GIL).

    .venv/bin/python bench/bench_walsync.py [--rounds 3000] [--dir PATH]

The folder should be on the disk the data folder is on (default: a temporary folder in the
current one).
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from quotaflow import _native
from quotaflow.store.walsync import PyWalSync, Syncer

FILE_BYTES = 40 * 1024 * 1024
WRAP_BYTES = 32 * 1024 * 1024
WRITE_BYTES = 8192
# Turns of this many rounds each: syncs of the three files interleaved one by one shared the
# device's cache flushes, which hid what each costs alone.
ROUNDS_PER_TURN = 250
WAYS = ("bare fdatasync", "stat, then fdatasync", "PyWalSync (statx via libc)", "WalSync (statx)")


def _waiter(syncer: Syncer) -> Callable[[], None]:
    def sync() -> None:
        number = syncer.request()
        while syncer.synced() < number:
            select.select([syncer.fileno()], [], [], 1.0)

    return sync


def _file(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"\0" * FILE_BYTES)
    os.fsync(fd)
    return fd


def measure(folder: Path, rounds: int) -> dict[str, list[float]]:
    # A file each: a time read on one file changes nothing for the others' writes.
    files = {name: folder / f"{i}.wal" for i, name in enumerate(WAYS)}
    fds = {name: _file(path) for name, path in files.items()}
    syncers: dict[str, Syncer] = {}
    try:
        syncers["PyWalSync (statx via libc)"] = PyWalSync(files["PyWalSync (statx via libc)"])
        if _native.MODE == "compiled":
            from quotaflow.store._walsync import WalSync

            syncers["WalSync (statx)"] = WalSync(os.fspath(files["WalSync (statx)"]))
        bare, statted = fds["bare fdatasync"], fds["stat, then fdatasync"]
        path = files["stat, then fdatasync"]

        def stat_then_sync() -> None:  # the old C syncer's check, on the writer's thread
            os.stat(path)
            os.fdatasync(statted)

        ways: dict[str, Callable[[], None]] = {
            "bare fdatasync": lambda: os.fdatasync(bare),
            "stat, then fdatasync": stat_then_sync,
        }
        ways.update({name: _waiter(s) for name, s in syncers.items()})
        waits: dict[str, list[float]] = {name: [] for name in ways}
        block = b"q" * WRITE_BYTES
        offsets = dict.fromkeys(ways, 0)
        for at in range(0, rounds, ROUNDS_PER_TURN):
            for name, sync in ways.items():
                fd, offset, found = fds[name], offsets[name], waits[name]
                for _ in range(min(ROUNDS_PER_TURN, rounds - at)):
                    os.pwrite(fd, block, offset)
                    offset = (offset + WRITE_BYTES) % WRAP_BYTES
                    started = time.perf_counter()
                    sync()
                    found.append(time.perf_counter() - started)
                offsets[name] = offset
        return waits
    finally:
        for s in syncers.values():
            s.close()
        for fd in fds.values():
            os.close(fd)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3000)
    p.add_argument("--dir", type=Path, default=None, help="folder for the file (default: here)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd()) as tmp:
        waits = measure(Path(tmp), args.rounds)
    ceiling = statistics.median(waits["bare fdatasync"])
    print("| syncer | p50 | p99 | mean | ceiling (same run) | ratio |")
    print("|---|---|---|---|---|---|")
    for name, found in waits.items():
        p50 = statistics.median(found)
        print(
            f"| {name} | {p50 * 1e6:.0f} us | {_quantile(found, 0.99) * 1e6:.0f} us "
            f"| {statistics.fmean(found) * 1e6:.0f} us | bare fdatasync p50 {ceiling * 1e6:.0f} us "
            f"| {ceiling / p50:.2f} |"
        )
    print(f"({args.rounds} rounds of {WRITE_BYTES} bytes each, {_native.MODE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
