"""Checking record files: the manifest's signature, the chain, and each record against the list.

A record is named by its line number in the file (1-based, header included) and its seq. With
a manifest whose signature holds, the manifest's list of (seq, line digest) is the authority:
a line whose seq it does not list was inserted, one whose digest differs was changed, one out of
the listed order was moved, and a listed seq with no line was removed. Without a trustworthy
manifest only the chain speaks, and it names the first line whose link is broken.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from quotaflow.records._chain import (
    FORMATS,
    GENESIS,
    MANIFEST_SUFFIX,
    PART_SUFFIX,
    MalformedLine,
    content_hash,
    line_hash,
    manifest_signature_ok,
    unpack_entries,
)

PROBLEM_KINDS = (
    "signature",  # the manifest's signature does not verify with the given key
    "manifest",  # missing, unreadable, or disagrees with the file as a whole
    "malformed",  # a line that is not a record of the file's format
    "changed",  # a listed record whose content differs
    "removed",  # a listed record that is not in the file
    "inserted",  # a record the manifest does not list
    "reordered",  # a listed record out of its listed place
    "chain",  # a line whose `prev` is not the hash of the line before
    "gap",  # between two files: the chain does not continue (a file is missing)
)


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    message: str
    file: str
    line: int | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "seq": self.seq,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = "".join(
            f" {name} {value}"
            for name, value in (("line", self.line), ("seq", self.seq))
            if value is not None
        )
        return f"{self.file}:{where}: {self.kind}: {self.message}"


@dataclass(slots=True)
class VerifyReport:
    files: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    heads: list[tuple[str, str, str]] = field(default_factory=list)  # (file, prev_head, head)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass(slots=True)
class _Line:
    number: int  # 1-based line number in the file
    seq: int
    prev: str
    digest: str  # of the whole line: what the next line's `prev` must be
    content: str  # of the line without `prev`: what the manifest lists
    fields: dict[str, Any]


def verify(path: str | Path, public_key: Ed25519PublicKey) -> VerifyReport:
    """Verify one record file (its manifest next to it) or every file in a folder."""
    target = Path(path)
    report = VerifyReport()
    if target.is_dir():
        files = sorted(
            p
            for p in target.iterdir()
            if p.suffix.lstrip(".") in FORMATS and not p.name.endswith(PART_SUFFIX)
        )
        by_format: dict[str, list[Path]] = {}
        for p in files:
            by_format.setdefault(p.suffix.lstrip("."), []).append(p)
        for group in by_format.values():
            before = len(report.heads)
            for p in group:
                _verify_file(p, public_key, report)
            _check_continuity(report.heads[before:], report)
    else:
        _verify_file(target, public_key, report)
    return report


def read_lines(path: Path, fmt_name: str) -> tuple[list[_Line], list[Problem]]:
    fmt = FORMATS[fmt_name]
    raw = path.read_bytes()
    parts = raw.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    lines: list[_Line] = []
    problems: list[Problem] = []
    start = 0
    if fmt.header is not None:
        if not parts or parts[0] != fmt.header:
            problems.append(Problem("malformed", "missing or changed CSV header", path.name, 1))
        else:
            start = 1
    for i in range(start, len(parts)):
        try:
            seq, prev, fields = fmt.parse(parts[i])
        except MalformedLine as exc:
            problems.append(Problem("malformed", str(exc), path.name, i + 1))
            continue
        line = parts[i]
        lines.append(
            _Line(i + 1, seq, prev, line_hash(line), content_hash(fmt, line, prev), fields)
        )
    return lines, problems


def _load_manifest(data: Path, report: VerifyReport) -> dict[str, Any] | None:
    mpath = data.with_name(data.name + MANIFEST_SUFFIX)
    try:
        doc = orjson.loads(mpath.read_bytes())
    except FileNotFoundError:
        report.problems.append(Problem("manifest", "no manifest next to the file", data.name))
        return None
    except orjson.JSONDecodeError as exc:
        report.problems.append(Problem("manifest", f"unreadable manifest: {exc}", data.name))
        return None
    if not isinstance(doc, dict):
        report.problems.append(Problem("manifest", "manifest is not an object", data.name))
        return None
    return doc


def _verify_file(data: Path, public_key: Ed25519PublicKey, report: VerifyReport) -> None:
    report.files += 1
    manifest = _load_manifest(data, report)
    trusted = manifest is not None and manifest_signature_ok(manifest, public_key)
    if manifest is not None and not trusted:
        report.problems.append(
            Problem("signature", "manifest signature does not verify with this key", data.name)
        )
    fmt_name = str(manifest.get("format")) if manifest else data.suffix.lstrip(".")
    if fmt_name not in FORMATS:
        report.problems.append(Problem("manifest", f"unknown format {fmt_name!r}", data.name))
        return
    lines, malformed = read_lines(data, fmt_name)
    report.records += len(lines)
    report.problems.extend(malformed)
    found: list[Problem] = []
    if trusted and manifest is not None:
        found = _against_manifest(data.name, lines, manifest)
        if not found and not malformed:
            found = _whole_file(data, lines, manifest)
        prev_head = str(manifest.get("prev_head", GENESIS))
        report.heads.append((data.name, prev_head, str(manifest.get("head", ""))))
    if not found:  # nothing named yet (or no manifest to trust): let the chain speak
        start = str(manifest.get("prev_head")) if trusted and manifest else None
        found = _chain(data.name, lines, start)
    report.problems.extend(found)


def _against_manifest(name: str, lines: list[_Line], manifest: dict[str, Any]) -> list[Problem]:
    try:
        entries = unpack_entries(str(manifest["entries"]))
    except (KeyError, ValueError) as exc:
        return [Problem("manifest", f"entries unreadable: {exc}", name)]
    index = {seq: i for i, (seq, _) in enumerate(entries)}
    problems: list[Problem] = []
    if len(index) != len(entries) or len(entries) != manifest.get("count"):
        # Signed, yet not what was written: the writer listed records it never wrote.
        what = f"{len(entries)} entries for {len(index)} seqs, count {manifest.get('count')}"
        problems.append(Problem("manifest", f"entries do not add up: {what}", name))
    placed: list[tuple[int, _Line]] = []  # (listed index, line) for listed records, file order
    seen: set[int] = set()
    for line in lines:
        i = index.get(line.seq)
        if i is None or line.seq in seen:
            what = "a second line with this seq" if line.seq in seen else "a seq not listed"
            problems.append(Problem("inserted", what, name, line.number, line.seq))
            continue
        seen.add(line.seq)
        if entries[i][1] != line.content[: len(entries[i][1])]:
            problems.append(
                Problem(
                    "changed", "content differs from the signed digest", name, line.number, line.seq
                )
            )
        placed.append((i, line))
    for moved in _out_of_order(placed):
        problems.append(
            Problem("reordered", "record is out of its signed place", name, moved.number, moved.seq)
        )
    header = 1 if FORMATS[str(manifest.get("format"))].header is not None else 0
    for i, (seq, _) in enumerate(entries):
        if seq not in seen:
            problems.append(
                Problem(
                    "removed",
                    f"listed record missing (expected at line {i + 1 + header})",
                    name,
                    None,
                    seq,
                )
            )
    problems.sort(key=lambda p: (p.line if p.line is not None else 0, p.seq or 0))
    return problems


def _out_of_order(placed: list[tuple[int, _Line]]) -> list[_Line]:
    """Lines outside a longest increasing run of listed indexes: the fewest that moved."""
    tails: list[int] = []  # tails[k]: smallest listed index ending a run of length k+1
    tail_pos: list[int] = []
    parent = [-1] * len(placed)
    for pos, (i, _) in enumerate(placed):
        k = bisect.bisect_left(tails, i)
        if k == len(tails):
            tails.append(i)
            tail_pos.append(pos)
        else:
            tails[k], tail_pos[k] = i, pos
        parent[pos] = tail_pos[k - 1] if k else -1
    keep: set[int] = set()
    pos = tail_pos[-1] if tail_pos else -1
    while pos != -1:
        keep.add(pos)
        pos = parent[pos]
    return [line for pos, (_, line) in enumerate(placed) if pos not in keep]


def _whole_file(data: Path, lines: list[_Line], manifest: dict[str, Any]) -> list[Problem]:
    """Every record matches; the file as a whole must too (count, head, bytes)."""
    problems = []
    if manifest.get("count") != len(lines):
        problems.append(Problem("manifest", "record count differs from the manifest", data.name))
    head = lines[-1].digest if lines else manifest.get("prev_head")
    if manifest.get("head") != head:
        problems.append(Problem("manifest", "chain head differs from the manifest", data.name))
    if hashlib.sha256(data.read_bytes()).hexdigest() != manifest.get("file_sha256"):
        problems.append(
            Problem("manifest", "file bytes differ from the manifest (outside records)", data.name)
        )
    return problems


def _chain(name: str, lines: list[_Line], start: str | None) -> list[Problem]:
    problems = []
    prev = start
    last_seq: int | None = None
    for line in lines:
        if prev is not None and line.prev != prev:
            problems.append(
                Problem(
                    "chain",
                    "prev is not the hash of the line before: this line or the one before it "
                    "was changed, or a record between them was removed or inserted",
                    name,
                    line.number,
                    line.seq,
                )
            )
        if last_seq is not None and line.seq <= last_seq:
            problems.append(
                Problem("reordered", "seq not above the line before", name, line.number, line.seq)
            )
        prev, last_seq = line.digest, line.seq
    return problems


def _check_continuity(heads: list[tuple[str, str, str]], report: VerifyReport) -> None:
    """Consecutive files of one format must chain: each starts from the last one's head."""
    for (_, _, head), (name, prev_head, _) in itertools.pairwise(heads):
        if prev_head != head:
            report.problems.append(
                Problem("gap", "does not continue the previous file's chain (file missing?)", name)
            )
