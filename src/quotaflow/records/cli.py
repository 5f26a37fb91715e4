"""`quotaflow cdr list|export|verify|public-key` and `quotaflow settle verify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from quotaflow.records._keys import KeyFileError, load_or_create_key, load_public_key, public_pem
from quotaflow.records._settle import Tariff, TariffError, settle_verify
from quotaflow.records._source import RecordFilter, RecordSource
from quotaflow.records._verify import verify
from quotaflow.records._writer import ChainWriter, Rotation

PAGE = 5000


def register(subparsers: Any) -> None:
    """Add `cdr` and `settle` to the `quotaflow` command's subparsers."""
    cdr = subparsers.add_parser("cdr", help="list, export and verify charging records")
    actions = cdr.add_subparsers(dest="cdr_action", required=True)

    ls = actions.add_parser("list", help="print records as JSON lines")
    where = ls.add_mutually_exclusive_group()
    where.add_argument("--url", help="ask a running server (GET /v1/cdrs)")
    where.add_argument("--data-dir", type=Path, help="read the ledger file directly (read-only)")
    _filters(ls)
    ls.add_argument("--limit", type=int, default=100)

    ex = actions.add_parser("export", help="write chained, signed record files from a data dir")
    ex.add_argument("--data-dir", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True, help="folder; a second run continues")
    ex.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ex.add_argument("--records-per-file", type=int, default=100_000)
    _filters(ex)

    ve = actions.add_parser("verify", help="check a record file or folder against its manifest")
    ve.add_argument("path", type=Path)
    key = ve.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", help="PEM file, or 64 hex digits of the raw key")
    key.add_argument("--data-dir", type=Path, help="use the server's own key in this data dir")
    ve.add_argument("--json", action="store_true", help="print the report as JSON")

    pk = actions.add_parser("public-key", help="print the signing key's public half (PEM)")
    pk.add_argument("--data-dir", type=Path, required=True)

    settle = subparsers.add_parser("settle", help="roaming settlement checks")
    settle_actions = settle.add_subparsers(dest="settle_action", required=True)
    sv = settle_actions.add_parser("verify", help="verify and re-rate a partner's usage file")
    sv.add_argument("path", type=Path, help="the partner's signed record file")
    sv.add_argument("--partner-key", required=True, help="the partner's public key (PEM or hex)")
    sv.add_argument(
        "--tariff",
        type=Path,
        required=True,
        help="the agreed tariff: a rating-engine TOML file (see RATING.md) or a JSON rate list",
    )
    sv.add_argument("--plan", help="the agreed plan of a TOML tariff (default: its default)")
    sv.add_argument(
        "--tolerance-micros", type=int, default=0, help="ignore differences up to this much"
    )
    sv.add_argument("--json", action="store_true", help="print the report as JSON")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscriber", help="only this subscriber id")
    p.add_argument("--after-seq", type=int, default=0)
    p.add_argument("--since-ms", type=int, help="at_ms >= this (epoch ms)")
    p.add_argument("--until-ms", type=int, help="at_ms < this (epoch ms)")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--kind", choices=["session", "event", "refund"])


def _filter(args: argparse.Namespace, after_seq: int | None = None) -> RecordFilter:
    return RecordFilter(
        after_seq=args.after_seq if after_seq is None else after_seq,
        subscriber_id=args.subscriber,
        since_ms=args.since_ms,
        until_ms=args.until_ms,
        session_id=args.session,
        kind=args.kind,
    )


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> int:
    sys.stderr.write(f"quotaflow: {text}\n")
    return 2


def run(args: argparse.Namespace) -> int:
    """Run a `cdr` or `settle` command; returns the exit status (0 ok, 1 problems, 2 usage)."""
    try:
        if args.command == "settle":
            return _settle(args)
        action = args.cdr_action
        if action == "list":
            return _list(args)
        if action == "export":
            return _export(args)
        if action == "verify":
            return _verify(args)
        if action == "public-key":
            sys.stdout.write(
                public_pem(load_or_create_key(args.data_dir / "keys").public_key()).decode()
            )
            return 0
    except (KeyFileError, TariffError, OSError) as exc:
        return _err(str(exc))
    return 2


def _ledger(data_dir: Path) -> RecordSource:
    path = data_dir / "ledger.sqlite3"
    if not path.exists():
        raise OSError(f"no ledger at {path}")
    return RecordSource(db_path=path)


def _list(args: argparse.Namespace) -> int:
    if not 0 < args.limit <= 100_000:
        return _err("--limit must be in 1..100000")
    if args.data_dir is not None:
        source = _ledger(args.data_dir)
        try:
            for r in source.read_sync(_filter(args), args.limit):
                _out(orjson.dumps(r).decode())
        finally:
            source.close()
        return 0
    url = (args.url or "http://127.0.0.1:8080").rstrip("/") + "/v1/cdrs"
    params: dict[str, Any] = {"after_seq": args.after_seq, "limit": min(args.limit, 1000)}
    for name, value in (
        ("subscriber_id", args.subscriber),
        ("since_ms", args.since_ms),
        ("until_ms", args.until_ms),
        ("session_id", args.session),
        ("kind", args.kind),
    ):
        if value is not None:
            params[name] = value
    try:
        response = httpx.get(url, params=params, timeout=10)
    except httpx.HTTPError as exc:
        return _err(f"cannot reach {url}: {exc}")
    if not response.is_success:
        sys.stderr.write(response.text + "\n")
        return 1
    for r in response.json()["records"]:
        _out(orjson.dumps(r).decode())
    return 0


def _export(args: argparse.Namespace) -> int:
    """Offline export: identities are not joined (the ledger is not loaded), only ids."""
    source = _ledger(args.data_dir)
    key = load_or_create_key(args.data_dir / "keys")
    writer = ChainWriter(args.out, args.format, key, Rotation(records_max=args.records_per_file))
    try:
        writer.recover()
    except RuntimeError as exc:  # the folder is a running exporter's
        source.close()
        return _err(str(exc))
    total = 0
    try:
        while True:
            after = max(writer.last_seq, args.after_seq)
            page = source.read_sync(_filter(args, after), PAGE)
            if not page:
                break
            total += writer.append(page)
        writer.seal()
    finally:
        source.close()
        writer.close()
    _out(orjson.dumps({"exported": total, **writer.status()}).decode())
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.public_key is not None:
        public = load_public_key(args.public_key)
    else:
        public = load_or_create_key(args.data_dir / "keys").public_key()
    report = verify(args.path, public)
    if args.json:
        _out(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for p in report.problems:
            _out(str(p))
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        _out(f"{report.files} file(s), {report.records} record(s): {verdict}")
    return 0 if report.ok else 1


def _settle(args: argparse.Namespace) -> int:
    tariff = Tariff.load(args.tariff, args.plan, args.tolerance_micros)
    report = settle_verify(args.path, load_public_key(args.partner_key), tariff)
    if args.json:
        _out(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for p in report.verification.problems:
            _out(str(p))
        for d in report.discrepancies:
            _out(str(d))
        _out(
            f"{report.records} record(s); claimed {report.claimed_micros} micros, "
            f"tariff gives {report.expected_micros}: "
            + ("ok" if report.ok else f"{len(report.discrepancies)} discrepancy(ies)")
        )
    return 0 if report.ok else 1
