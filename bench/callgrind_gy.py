"""Instructions per CCR-U on Gy's request path, counted by callgrind (repeatable, unlike time).

Runs `bench/profile_gy.py` under `valgrind --tool=callgrind` at two sizes and prints, per
CCR-U, the difference of the inclusive counts of the request path's entry points (which cancels
start-up and shutdown): `handle_now` (mapping, engine, ledger, store, answer), `parse_message`,
the group commit (`_take`, `_write`, the syncer's `request` and `synced`, `_durable`), `_release`
(answers settled after the commit) and `encode_message`. The program's total is printed too,
with the checkpointer's share: its thread runs on a timer, so how much of it lands in a run
depends on valgrind's speed (0 to 13k per CCR-U seen), which is why the path, not the total, is
the figure to compare.

    .venv/bin/python bench/callgrind_gy.py [--small 2000] [--large 6000] [--keep DIR]

About 3 minutes. Needs valgrind and callgrind_annotate (Debian package valgrind).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRY_POINTS = {
    "handle_now": "CPyDef_gy___GyApplication___handle_now",
    "parse_message": "CPyDef_validate___parse_message",
    "_take": "CPyDef_embedded___EmbeddedStore____take",
    "_write": "CPyDef_embedded___EmbeddedStore____write",
    "sync request": "WalSync_request",
    "synced": "WalSync_synced",
    "_durable": "CPyDef_embedded___EmbeddedStore____durable",
    "_release": "CPyDef_gy___GyApplication____release",
    "encode_message, outside handle_now": "CPyDef_codec___encode_message",
}
# handle_now encodes each answer once (`_seal`), inside its own count: that share of
# encode_message is taken out of encode_message's line, or the path would count it twice.
SEAL = "CPyDef_gy___GyApplication____seal"
CHECKPOINT = "sqlite3WalCheckpoint"
_LINE = re.compile(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)")


def _profile(updates: int, out: Path) -> None:
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE / "profile_gy.py"),
            "--updates",
            str(updates),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _inclusive(path: Path) -> tuple[int, dict[str, int]]:
    """The run's total, and the inclusive count of each function (its largest entry)."""
    # From "/": callgrind_annotate names a file by the path it resolves from the working
    # directory, and in the project's folder it splits one function into several entries.
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--tree=none", "--threshold=100", str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout
    total = 0
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or "=>" in line:  # a call line: the callee's cost from one caller
            continue
        count, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = count
        where, _, function = name.split(" ")[0].rpartition(":")
        for wanted in (*ENTRY_POINTS.values(), CHECKPOINT):
            # The function's own file (not a header inlined into it); a recursive entry ends
            # in "'2" and so is another name.
            if function == wanted and ("__native_" in where or wanted == CHECKPOINT):
                found[wanted] = max(found.get(wanted, 0), count)
    return total, found


def _called_from(path: Path, callee: str, caller: str) -> int:
    """What `callee` cost when `caller` called it (callgrind_annotate's caller tree)."""
    text = subprocess.run(
        ["callgrind_annotate", "--tree=caller", "--threshold=100", str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout
    found = 0
    block: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            block = []
            continue
        if "*  " in line and f":{callee} " in line and "__native_" in line:
            for above in block:  # the caller lines ("<") come before the function's own
                m = _LINE.match(above)
                if m is not None and f":{caller} " in above.replace("< ", "", 1) + " ":
                    found = max(found, int(m.group(1).replace(",", "")))
        block.append(line)
    # Nothing found means the output's shape or the names changed: fail, not count twice.
    assert found > 0, f"no call of {callee} from {caller} in {path}"
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=2000, help="CCR-Us in the smaller run")
    p.add_argument("--large", type=int, default=6000, help="CCR-Us in the larger run")
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        runs = []
        for updates in (args.small, args.large):
            out = folder / f"callgrind.gy.{updates}"
            _profile(updates, out)
            total, found = _inclusive(out)
            encode = ENTRY_POINTS["encode_message, outside handle_now"]
            found[encode] = found.get(encode, 0) - _called_from(out, encode, SEAL)
            runs.append((total, found))
    (total_a, a), (total_b, b) = runs
    per: int = args.large - args.small

    def diff(key: str) -> float:
        return (b.get(key, 0) - a.get(key, 0)) / per

    path = 0.0
    print("| instructions per CCR-U | count |")
    print("|---|---|")
    for label, key in ENTRY_POINTS.items():
        path += diff(key)
        print(f"| {label} | {diff(key):,.0f} |")
    print(f"| **the request path** | **{path:,.0f}** |")
    print(f"| the whole program | {(total_b - total_a) / per:,.0f} |")
    print(f"| of which the checkpointer's checkpoints | {diff(CHECKPOINT):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
