"""Last-level cache misses per CCR-U on Gy, simulated by cachegrind: the server's memory
footprint as a repeatable figure.

On a busy host the charging server slows far more than the bare answerer (docs/PERFORMANCE.md):
its requests touch more memory than its core's own cache holds, and what the host's other
tenants leave of the shared cache decides how much of it misses. Time cannot show a change
that makes the footprint smaller (the host's noise is larger than it); this can. It runs
`bench/profile_gy.py` under `valgrind --tool=cachegrind` with a last-level cache of LL_BYTES (the
size of one core's L2 on these machines, which is what a thrashed L3 leaves) at two sizes, and
prints the difference per CCR-U of the whole program (the checkpointer's thread included): the
instructions, the first-level data misses and the last-level data misses, and the functions
with the most last-level misses.

    .venv/bin/python bench/cachesim_gy.py [--small 2000] [--large 6000] [--top 12]

About 3 minutes (both sizes run at once, one per core). Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LL_BYTES = 1024 * 1024
LL_SPEC = f"--LL={LL_BYTES},16,64"
# cachegrind's events, in the order its output file lists them with --cache-sim=yes
EVENTS = ("Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw")

Counts = dict[tuple[str, str], list[int]]


def _start(updates: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            LL_SPEC,
            f"--cachegrind-out-file={out}",
            sys.executable,
            str(HERE / "profile_gy.py"),
            "--updates",
            str(updates),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _counts(path: Path) -> Counts:
    """Each function's counts (summed over its lines), by (function, file)."""
    found: Counts = defaultdict(lambda: [0] * len(EVENTS))
    file = function = ""
    with path.open() as lines:
        for line in lines:
            if line.startswith("events:"):
                assert tuple(line.split()[1:]) == EVENTS, f"unexpected events: {line}"
            elif line.startswith("fl="):
                file = line[3:].strip().rpartition("/")[2]
            elif line.startswith("fn="):
                function = line[3:].strip()
            elif line[:1].isdigit() and function:
                counts = found[(function, file)]
                for i, value in enumerate(line.split()[1:]):
                    counts[i] += int(value)
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=2000, help="CCR-Us in the smaller run")
    p.add_argument("--large", type=int, default=6000, help="CCR-Us in the larger run")
    p.add_argument("--top", type=int, default=12, help="functions listed by last-level misses")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"cachegrind.gy.{n}" for n in (args.small, args.large)]
        runs = [_start(n, out) for n, out in zip((args.small, args.large), outs, strict=True)]
        for run in runs:
            if run.wait() != 0:
                raise SystemExit(f"valgrind failed ({run.args!r})")
        small, large = (_counts(out) for out in outs)
    per = args.large - args.small
    diff = {
        key: [(b - a) / per for a, b in zip(small.get(key, [0] * len(EVENTS)), counts, strict=True)]
        for key, counts in large.items()
    }
    total = [sum(d[i] for d in diff.values()) for i in range(len(EVENTS))]
    at = {name: i for i, name in enumerate(EVENTS)}

    def ll(d: list[float]) -> float:
        return d[at["DLmr"]] + d[at["DLmw"]]

    print(f"| per CCR-U, whole program, LL {LL_BYTES // 1024} KiB | count |")
    print("|---|---|")
    print(f"| instructions | {total[at['Ir']]:,.0f} |")
    print(
        f"| first-level data misses (read + write) | {total[at['D1mr']] + total[at['D1mw']]:,.0f} |"
    )
    print(
        f"| **last-level data misses** (read + write) | **{ll(total):,.0f}** "
        f"({total[at['DLmr']]:,.0f} + {total[at['DLmw']]:,.0f}) |"
    )
    print()
    print("| function (file) | last-level misses | instructions |")
    print("|---|---|---|")
    ranked = sorted(diff.items(), key=lambda item: ll(item[1]), reverse=True)
    for (function, file), d in ranked[: args.top]:
        print(f"| {function} ({file}) | {ll(d):,.1f} | {d[at['Ir']]:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
