"""`quotaflow`: run the server, provision subscribers, read balances, see a demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from quotaflow import __version__
from quotaflow.records import cli as records_cli

DEFAULT_URL = "http://127.0.0.1:8080"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quotaflow", description=__doc__)
    p.add_argument("--version", action="version", version=f"quotaflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the charging server")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--http", type=_host_port, help="management/SBI listener HOST:PORT")
    serve.add_argument("--data-dir", type=Path, help="where the ledger is kept")
    serve.add_argument("--diameter", type=_host_port, help="Diameter listener HOST:PORT")
    serve.add_argument("--no-diameter", action="store_true", help="do not start Diameter")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
        return c

    s = client("subscriber", "create, show, list, bar, unbar or delete subscribers")
    s.add_argument("action", choices=["add", "show", "list", "bar", "unbar", "delete"])
    s.add_argument("id", nargs="?")
    for ident in ("msisdn", "imsi", "nai"):
        s.add_argument(f"--{ident}")

    t = client("topup", "credit a subscriber")
    t.add_argument("id")
    t.add_argument("unit", choices=["octets", "seconds", "events", "money"])
    t.add_argument("amount", type=int)
    t.add_argument("--topup-id", help="makes the top-up safe to retry")

    g = client("transfer", "give credit to another subscriber, or reverse a gift")
    g.add_argument("giver", help="who gives (or, with --reverse, the transfer id)")
    g.add_argument("receiver", nargs="?")
    g.add_argument("unit", nargs="?", choices=["octets", "seconds", "events", "money"])
    g.add_argument("amount", nargs="?", type=int)
    g.add_argument("--id", required=True, help="the transfer's id (makes it safe to retry)")
    g.add_argument("--reverse", action="store_true", help="give back what is left of GIVER")

    b = client("balance", "show a subscriber's buckets and totals")
    b.add_argument("id")

    records_cli.register(sub)

    d = sub.add_parser("demo", help="provision subscribers and drive sessions in-process")
    d.add_argument("--data-dir", type=Path, help="keep the demo ledger here (default: temporary)")
    return p


def _print(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _call(method: str, url: str, json: Any = None) -> int:
    try:
        response = httpx.request(method, url, json=json, timeout=10)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"quotaflow: cannot reach {url}: {exc}\n")
        return 2
    if response.content:
        _print(response.json())
    return 0 if response.is_success else 1


def _subscriber(args: argparse.Namespace) -> int:
    base = f"{args.url}/v1/subscribers"
    if args.action == "list":
        return _call("GET", base)
    if not args.id:
        sys.stderr.write("quotaflow: subscriber id required\n")
        return 2
    if args.action == "add":
        body = {
            "id": args.id,
            **{k: getattr(args, k) for k in ("msisdn", "imsi", "nai") if getattr(args, k)},
        }
        return _call("POST", base, body)
    if args.action == "show":
        return _call("GET", f"{base}/{args.id}")
    if args.action == "delete":
        return _call("DELETE", f"{base}/{args.id}")
    status = "barred" if args.action == "bar" else "active"
    return _call("PATCH", f"{base}/{args.id}", {"status": status})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "subscriber":
        return _subscriber(args)
    if args.command == "topup":
        body: dict[str, Any] = {"unit": args.unit, "amount": args.amount}
        if args.topup_id:
            body["id"] = args.topup_id
        return _call("POST", f"{args.url}/v1/subscribers/{args.id}/topups", body)
    if args.command == "transfer":
        if args.reverse:
            return _call("POST", f"{args.url}/v1/transfers/{args.giver}/reversal", {"id": args.id})
        if None in (args.receiver, args.unit, args.amount):
            sys.stderr.write("quotaflow: transfer GIVER RECEIVER UNIT AMOUNT --id ID\n")
            return 2
        body = {
            "id": args.id,
            "from": args.giver,
            "to": args.receiver,
            "unit": args.unit,
            "amount": args.amount,
        }
        return _call("POST", f"{args.url}/v1/transfers", body)
    if args.command == "balance":
        return _call("GET", f"{args.url}/v1/subscribers/{args.id}/balance")
    if args.command == "demo":
        from quotaflow.cli.demo import run_demo

        return asyncio.run(run_demo(args.data_dir))
    if args.command in ("cdr", "settle"):
        return records_cli.run(args)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from quotaflow import config, logs, server

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        sys.stderr.write(f"quotaflow: {exc}\n")
        return 2
    if args.http:
        cfg.http_host, cfg.http_port = args.http
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.diameter:
        cfg.diameter_host, cfg.diameter_port = args.diameter
    if args.no_diameter:
        cfg.diameter_enabled = False
    logs.setup(args.log_level or cfg.log_level)
    from quotaflow.store.base import FolderInUse, SnapshotFileError

    try:
        try:
            import uvloop

            uvloop.run(server.run(cfg))
        except ImportError:
            asyncio.run(server.run(cfg))
    except (FolderInUse, SnapshotFileError) as exc:  # the operator's to act on: no traceback
        sys.stderr.write(f"quotaflow: {exc}\n")
        return 1
    return 0
