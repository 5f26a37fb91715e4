"""Chained, signed record files: every kind of tampering is detected and named (line and seq)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow.records import (
    ChainWriter,
    Rotation,
    load_or_create_key,
    load_public_key,
    verify,
)
from quotaflow.records._chain import FORMATS, line_hash, signed_bytes


def record(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "at_ms": 1_800_000_000_000 + seq,
        "op": "charge",
        "kind": "session",
        "interface": "gy",
        "session_id": f"s-{seq % 3}",
        "subscriber_id": "alice",
        "identities": {"msisdn": "46700", "imsi": "00101"},
        "unit": "octets",
        "rating_group": 10,
        "used_units": 1000 * seq,
        "posted_units": 1000 * seq,
        "drawn": {"main-octets": 1000 * seq},
        "cost_micros": 0,
        "final": seq == 10,
        "cause": 'a "quoted", comma\nnewline' if seq == 4 else None,
    }


SEQS = [3, 5, 6, 9, 12, 13, 20, 21, 22, 30]  # cdr seqs are not contiguous


def write_file(folder: Path, fmt: str, key: Ed25519PrivateKey) -> Path:
    w = ChainWriter(folder, fmt, key, Rotation())
    w.recover()
    w.append([record(s) for s in SEQS])
    assert w.seal()
    (data,) = sorted(folder.glob(f"cdr-*.{fmt}"))
    return data


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def rechain(path: Path, fmt: str, lines: list[bytes], start: int) -> list[bytes]:
    """What a careful tamperer does: recompute every `prev` from line `start` on."""
    f = FORMATS[fmt]
    out = list(lines)
    first = 1 if f.header is not None else 0
    for i in range(max(start, first + 1), len(out)):
        _, _, fields = f.parse(out[i])
        prev = line_hash(out[i - 1])
        if fmt == "jsonl":
            out[i] = f.encode(fields, prev)
        else:
            out[i] = out[i][: out[i].rfind(b",") + 1] + prev.encode()
    return out


def fail_one_fsync(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[int], bool] = lambda fd: True
) -> list[OSError]:
    """The next os.fsync of a descriptor that `when` picks fails with EIO; the returned list
    is empty once it has."""
    real_fsync = os.fsync
    failures = [OSError(5, "Input/output error")]

    def flaky_fsync(fd: int) -> None:
        if failures and when(fd):
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    return failures


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_key(tmp_path / "keys")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_untouched_file_verifies(tmp_path: Path, key: Ed25519PrivateKey, fmt: str) -> None:
    data = write_file(tmp_path / "out", fmt, key)
    report = verify(data, key.public_key())
    assert report.ok, report.problems
    assert report.records == len(SEQS)
    assert verify(tmp_path / "out", key.public_key()).ok
    pub = load_public_key(tmp_path / "keys" / "signing-key.pub.pem")
    assert verify(data, pub).ok
    assert oct(os.stat(tmp_path / "keys" / "signing-key.pem").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("careful", [False, True], ids=["naive", "rechained"])
@pytest.mark.parametrize("kind", ["changed", "removed", "reordered", "inserted"])
def test_tampering_is_named(
    tmp_path: Path, key: Ed25519PrivateKey, fmt: str, careful: bool, kind: str
) -> None:
    data = write_file(tmp_path / "out", fmt, key)
    lines = lines_of(data)
    h = 1 if fmt == "csv" else 0  # the header line
    expect: list[tuple[str, int | None, int]]
    if kind == "changed":  # line of seq 9: 9000 octets become 900
        lines[h + 3] = lines[h + 3].replace(b"9000", b"900", 1)
        start, expect = h + 3, [("changed", h + 4, 9)]
    elif kind == "removed":  # seq 12 dropped
        del lines[h + 4]
        start, expect = h + 4, [("removed", None, 12)]
    elif kind == "reordered":  # seq 20 moved before seq 13
        lines[h + 5], lines[h + 6] = lines[h + 6], lines[h + 5]
        start, expect = h + 5, [("reordered", h + 6, 20)]
    else:  # a forged record with a fresh seq, chained in after seq 6
        forged = FORMATS[fmt].encode(record(7), line_hash(lines[h + 2]))
        lines.insert(h + 3, forged)
        start, expect = h + 3, [("inserted", h + 4, 7)]
    if careful:
        lines = rechain(data, fmt, lines, start)
    put_lines(data, lines)
    report = verify(data, key.public_key())
    named = [(p.kind, p.line, p.seq) for p in report.problems]
    assert named == expect, report.problems
    if kind == "removed":
        assert "expected at line" in report.problems[0].message


def test_without_manifest_the_chain_names_the_break(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    data = write_file(tmp_path / "out", "jsonl", key)
    data.with_name(data.name + ".manifest.json").unlink()
    lines = lines_of(data)
    lines[3] = lines[3].replace(b"9000", b"900", 1)
    put_lines(data, lines)
    problems = [(p.kind, p.line, p.seq) for p in verify(data, key.public_key()).problems]
    assert problems == [("manifest", None, None), ("chain", 5, 12)]


def test_manifest_edit_or_other_key_breaks_the_signature(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    data = write_file(tmp_path / "out", "jsonl", key)
    other = Ed25519PrivateKey.generate().public_key()
    assert [p.kind for p in verify(data, other).problems] == ["signature"]
    mpath = data.with_name(data.name + ".manifest.json")
    doc = orjson.loads(mpath.read_bytes())
    doc["count"] = 9
    mpath.write_bytes(orjson.dumps(doc))
    assert [p.kind for p in verify(data, key.public_key()).problems] == ["signature"]


def test_a_signed_manifest_listing_a_record_twice_is_named(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Signed by the right key, yet not what was written: a writer that listed the entries of
    a failed write twice. Every line still matches an entry, so only the count tells."""
    data = write_file(tmp_path / "out", "jsonl", key)
    mpath = data.with_name(data.name + ".manifest.json")
    doc = orjson.loads(mpath.read_bytes())
    entries = base64.b64decode(doc["entries"])
    doc["entries"] = base64.b64encode(entries + entries[-16:]).decode()
    del doc["signature"]
    doc["signature"] = base64.b64encode(key.sign(signed_bytes(doc))).decode()
    mpath.write_bytes(orjson.dumps(doc))
    problems = verify(data, key.public_key()).problems
    assert [(p.kind, p.line) for p in problems] == [("manifest", None)]
    assert "11 entries for 10 seqs, count 10" in problems[0].message


def test_bytes_outside_records_are_caught(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    data = write_file(tmp_path / "out", "jsonl", key)
    with open(data, "ab") as f:
        f.write(b"trailing junk\n")
    problems = [(p.kind, p.line) for p in verify(data, key.public_key()).problems]
    assert problems == [("malformed", 11)]


def test_files_chain_and_a_missing_file_is_a_gap(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "out"
    w = ChainWriter(out, "jsonl", key, Rotation(records_max=3))
    w.recover()
    w.append([record(s) for s in SEQS])
    w.seal()
    files = sorted(out.glob("cdr-*.jsonl"))
    assert [f.name for f in files][:2] == [
        "cdr-000000000003-000000000006.jsonl",
        "cdr-000000000009-000000000013.jsonl",
    ]
    assert len(files) == 4 and verify(out, key.public_key()).ok
    files[1].unlink()
    files[1].with_name(files[1].name + ".manifest.json").unlink()
    problems = [(p.kind, p.file) for p in verify(out, key.public_key()).problems]
    assert problems == [("gap", files[2].name)]


def test_rotation_by_size_and_age(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    by_size = ChainWriter(tmp_path / "size", "csv", key, Rotation(size_bytes_max=700))
    by_size.recover()
    by_size.append([record(s) for s in SEQS])
    assert by_size.sealed_files >= 3
    by_age = ChainWriter(tmp_path / "age", "jsonl", key, Rotation(age_s_max=0.05))
    by_age.recover()
    now_ms = time.time_ns() // 1_000_000
    by_age.append([record(1)], now_ms)
    assert not by_age.rotate_if_due(now_ms + 10)
    assert by_age.rotate_if_due(now_ms + 60)
    assert verify(tmp_path / "size", key.public_key()).ok
    assert verify(tmp_path / "age", key.public_key()).ok


def test_recovery_cuts_a_torn_line_and_finishes_a_seal(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "out"
    w = ChainWriter(out, "jsonl", key, Rotation())
    w.recover()
    w.append([record(s) for s in SEQS[:4]])
    (part,) = out.glob("*.part")
    with open(part, "ab") as f:  # a crash mid-write of the next batch
        f.write(b'{"seq":12,"prev":"ab')
    (out / "position.json").unlink()  # and before the position was ever saved
    w.close()  # the crashed process let its lock go
    again = ChainWriter(out, "jsonl", key, Rotation())
    again.recover()
    assert again.last_seq == 9
    again.append([record(s) for s in SEQS])  # the source re-sends from its position
    again.seal()
    again.close()
    # A crash between the rename and the manifest: the next start signs it.
    (data,) = out.glob("cdr-*.jsonl")
    data.with_name(data.name + ".manifest.json").unlink()
    ChainWriter(out, "jsonl", key, Rotation()).recover()
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


def test_a_write_whose_fsync_failed_is_repeated_once_not_twice(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines reached the file but their fsync failed, so the writer did not count them;
    the exporter sends them again. The file must hold them once, chained as written."""
    out = tmp_path / "out"
    w = ChainWriter(out, "jsonl", key, Rotation(records_max=4))
    w.recover()
    w.append([record(s) for s in SEQS[:2]])
    failures = fail_one_fsync(monkeypatch)
    with pytest.raises(OSError, match="Input/output"):
        w.append([record(s) for s in SEQS])
    assert w.last_seq == SEQS[1] and not failures
    w.append([record(s) for s in SEQS])
    w.seal()
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


def test_a_file_sealed_right_after_a_failed_write_holds_only_what_was_counted(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal (on demand, or by age on an idle tick) can come between a failed write and its
    repetition: the uncounted lines must not go into the sealed file; they go to the next."""
    out = tmp_path / "out"
    w = ChainWriter(out, "jsonl", key, Rotation())
    w.recover()
    w.append([record(s) for s in SEQS[:2]])
    fail_one_fsync(monkeypatch)
    with pytest.raises(OSError, match="Input/output"):
        w.append([record(s) for s in SEQS])
    assert w.seal()
    w.append([record(s) for s in SEQS])
    w.seal()
    first = out / f"cdr-{SEQS[0]:012d}-{SEQS[1]:012d}.jsonl"
    assert len(lines_of(first)) == 2
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


def append_with_first_manifest_blocked(
    out: Path, key: Ed25519PrivateKey
) -> tuple[ChainWriter, Path]:
    """A writer of three records a file whose append of SEQS failed at the first file's
    manifest (its path is a folder, returned to be removed)."""
    w = ChainWriter(out, "jsonl", key, Rotation(records_max=3))
    w.recover()
    blocker = out / "cdr-000000000003-000000000006.jsonl.manifest.json"
    blocker.mkdir()
    with pytest.raises(OSError):
        w.append([record(s) for s in SEQS])
    return w, blocker


def test_a_manifest_that_fails_is_written_later_and_the_sealed_file_stays_sealed(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """The file is renamed before its manifest is written. When the manifest fails (here its
    path is a folder for a while), the next records must not go to the renamed file's old
    name: they start a new file, and the manifest is written before them."""
    out = tmp_path / "out"
    w, blocker = append_with_first_manifest_blocked(out, key)
    status = w.status()
    assert status["manifests_pending"] == 1 and status["open_file"] is None
    assert w.last_seq == 6
    with pytest.raises(OSError):  # still blocked: nothing more is written meanwhile
        w.append([record(s) for s in SEQS])
    assert w.last_seq == 6
    blocker.rmdir()
    w.append([record(s) for s in SEQS])  # the exporter sends again from its position
    w.seal()
    assert w.status()["manifests_pending"] == 0
    names = sorted(f.name for f in out.glob("cdr-*.jsonl"))
    assert names[0] == "cdr-000000000003-000000000006.jsonl" and len(names) == 4
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


def test_a_folder_fsync_that_fails_after_the_rename_leaves_the_file_sealed(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is done when the folder's fsync fails: the writer must not go back to the
    old .part name (it would start an empty file there); the fsync and the manifest follow."""
    out = tmp_path / "out"
    w = ChainWriter(out, "jsonl", key, Rotation(records_max=3))
    w.recover()
    failures = fail_one_fsync(
        monkeypatch,
        # the folder's, once a file was renamed
        lambda fd: (
            bool(list(out.glob("cdr-*-*.jsonl")))
            and os.path.isdir(os.readlink(f"/proc/self/fd/{fd}"))
        ),
    )
    with pytest.raises(OSError, match="Input/output"):
        w.append([record(s) for s in SEQS])
    assert not failures and w.status()["open_file"] is None
    assert w.status()["manifests_pending"] == 1
    w.append([record(s) for s in SEQS])
    w.seal()
    assert not list(out.glob("*.part"))
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


def test_a_restart_with_a_manifest_pending_asks_for_no_record_twice(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """The position is saved before a file is renamed: a restart after a seal whose append
    did not finish must not ask the source for that file's records again."""
    out = tmp_path / "out"
    first, blocker = append_with_first_manifest_blocked(out, key)
    first.close()  # the process that held it is gone
    blocker.rmdir()
    again = ChainWriter(out, "jsonl", key, Rotation(records_max=3))
    again.recover()  # signs the sealed file
    assert again.last_seq == 6
    again.append([record(s) for s in SEQS])  # the exporter sends again from its position
    again.seal()
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


@pytest.mark.parametrize("left", [b"", b"seq,at_"])
def test_a_csv_file_whose_header_never_reached_the_disk_is_started_again(
    tmp_path: Path, key: Ed25519PrivateKey, left: bytes
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "cdr-000000000003.csv.part").write_bytes(left)  # a crash inside the first write
    w = ChainWriter(out, "csv", key, Rotation())
    w.recover()
    w.append([record(s) for s in SEQS])
    w.seal()
    report = verify(out, key.public_key())
    assert report.ok and report.records == len(SEQS), report.problems


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_large_append_offers_the_gil_between_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The writer runs compiled on the exporter's thread, where nothing else would let the event
    loop's thread have the GIL until the whole batch was written (33 ms for 5,000 records)."""
    yields: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (yields.append(s), real_sleep(s)))
    from quotaflow.records._writer import YIELD_EVERY_LINES

    w = ChainWriter(tmp_path, fmt, load_or_create_key(tmp_path / "keys"), Rotation())
    w.recover()
    assert w.append([record(s) for s in range(1, 1001)]) == 1000
    assert yields.count(0) >= 1000 // YIELD_EVERY_LINES
    assert w.last_seq == 1000


def test_a_folder_has_one_writer_at_a_time(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """An exporter started while the one before it still holds the folder (finishing a write
    after its server died) is refused, and gets the folder once that one let it go."""
    out = tmp_path / "out"
    first = ChainWriter(out, "jsonl", key, Rotation())
    first.recover()
    first.append([record(s) for s in SEQS[:2]])
    second = ChainWriter(out, "jsonl", key, Rotation())
    with pytest.raises(RuntimeError, match="another exporter"):
        second.recover()
    first.close()
    second.recover()
    assert second.last_seq == SEQS[1]
    second.close()
