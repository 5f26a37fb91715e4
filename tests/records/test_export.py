"""The exporter against a real store: identities joined, position kept across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from quotaflow import records
from quotaflow.engine import Engine, ServiceRequest
from quotaflow.records import RecordOptions, Rotation
from quotaflow.store import EmbeddedStore
from tests.records.harness import (
    debits,
    eventually,
    provision,
    running_engine,
    serve_routes,
    stops_when_woken,
    stored,
)


def exported(folder: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in sorted(folder.glob("cdr-*.jsonl*")):
        if f.name.endswith(".manifest.json"):
            continue
        out.extend(orjson.loads(line)["record"] for line in f.read_bytes().splitlines())
    return out


@pytest.mark.parametrize("process", [True, False], ids=["own-process", "in-process"])
async def test_export_survives_restart_without_loss_or_duplicates(
    tmp_path: Path, process: bool
) -> None:
    data = tmp_path / "data"
    opts = RecordOptions(
        formats=("jsonl", "csv"),
        rotation=Rotation(records_max=4),
        poll_interval_s=0.05,
        process=process,
    )
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await engine.session_start("s1", "alice", 0, [ServiceRequest(10)])
        await engine.session_terminate("s1", 1, [ServiceRequest(10, used_units=5000)], "normal")
        service = await records.start(engine, engine.store, data, opts)
        await debits(engine, "alice", 5, "a")
        assert service.exporter is not None
        await eventually(lambda: service.exporter.position >= 7, what="first export")  # type: ignore[union-attr]
        await service()
        await debits(engine, "alice", 5, "b")  # while the exporter is down
    async with running_engine(data) as engine:
        service = await records.start(engine, engine.store, data, opts)
        await debits(engine, "alice", 2, "c")
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: service.exporter.position == last, what="catch up")  # type: ignore[union-attr]
        sealed = await service.exporter.seal()  # type: ignore[union-attr]
        await service()
    assert sealed == 2
    in_ledger = [
        r["seq"]
        for r in records.RecordSource(db_path=data / "ledger.sqlite3").read_sync(
            records.RecordFilter(), 1000
        )
    ]
    jsonl = exported(data / "records" / "jsonl")
    assert [r["seq"] for r in jsonl] == in_ledger and len(in_ledger) == 13
    first = jsonl[0]
    assert first["kind"] == "session" and first["final"] is True and first["cause"] == "normal"
    assert first["identities"] == {"msisdn": "4670alice", "imsi": "00101alice"}
    assert first["drawn"] == {"main-octets": 5000}
    key = records.load_or_create_key(data / "keys").public_key()
    for fmt in ("jsonl", "csv"):
        report = records.verify(data / "records" / fmt, key)
        assert report.ok and report.records == 13 and report.files == 4, report.problems


async def test_cdr_api_lists_and_filters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await provision(engine, "bob")
        await debits(engine, "alice", 3, "a")
        await debits(engine, "bob", 2, "b")
        service = await records.start(engine, engine.store, data, RecordOptions(export=False))
        async with (
            serve_routes(records.routes(service)) as url,
            httpx.AsyncClient(base_url=url, timeout=5) as http,
        ):
            r = await http.get("/v1/cdrs", params={"subscriber_id": "bob"})
            assert r.status_code == 200
            bob = r.json()["records"]
            assert [x["subscriber_id"] for x in bob] == ["bob", "bob"]
            assert bob[0]["identities"]["msisdn"] == "4670bob"
            page = (await http.get("/v1/cdrs", params={"limit": 2})).json()
            assert len(page["records"]) == 2 and page["next_after_seq"] == page["records"][1]["seq"]
            rest = (await http.get("/v1/cdrs", params={"after_seq": page["next_after_seq"]})).json()
            assert len(rest["records"]) == 3 and rest["next_after_seq"] is None
            events = (await http.get("/v1/cdrs", params={"kind": "event", "limit": 1000})).json()
            assert len(events["records"]) == 5
            bad = await http.get("/v1/cdrs", params={"limit": 0})
            assert bad.status_code == 422 and bad.json()["error"]["detail"] == {"field": "limit"}
            odd = await http.get("/v1/cdrs", params={"colour": "red"})
            assert odd.status_code == 422 and odd.json()["error"]["code"] == "invalid_request"
            key = (await http.get("/v1/cdrs/public-key")).json()
            assert key["algorithm"] == "Ed25519" and "BEGIN PUBLIC KEY" in key["pem"]
            assert (await http.post("/v1/cdrs/export/seal")).status_code == 422
        await service()


async def test_retention_prunes_only_old_records_every_consumer_has(tmp_path: Path) -> None:
    data = tmp_path / "data"
    now = [1_800_000_000_000]
    store = EmbeddedStore(data, clock=lambda: now[0], sweep_interval_s=3600, tune_gc=False)
    await store.open()
    try:
        engine = Engine(store)
        await provision(engine, "alice")
        await debits(engine, "alice", 5, "a")
        opts = RecordOptions(retention_days=1, poll_interval_s=0.05)
        service = await records.start(engine, store, data, opts)
        assert service.exporter is not None
        exported_up_to = stored(engine)[-1]["seq"]
        await eventually(lambda: service.exporter.position == exported_up_to, what="export")  # type: ignore[union-attr]
        await service()
        await debits(engine, "alice", 3, "b")  # old too, but not exported yet
        assert await service.prune() == 0  # nothing is a day old yet
        now[0] += 2 * 86_400_000
        await debits(engine, "alice", 1, "c")  # young
        before = stored(engine)
        pruned = await service.prune()
        after = stored(engine)
        assert pruned == sum(1 for r in before if r["seq"] <= exported_up_to) > 0
        assert [r["seq"] for r in after] == [r["seq"] for r in before if r["seq"] > exported_up_to]
        assert service.status()["pruned"] == pruned
    finally:
        await store.close()


async def test_export_stops_in_the_tick_it_is_woken(tmp_path: Path) -> None:
    """A wake-up and a stop in the same tick: the stop wins. (Python 3.11's wait_for returned
    the wake-up and dropped the cancel, so the loop ran on and stop() never returned.)"""
    data = tmp_path / "data"
    opts = RecordOptions(formats=("jsonl",), poll_interval_s=0.05, process=False)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await debits(engine, "alice", 2, "a")
        service = await records.start(engine, engine.store, data, opts)
        assert service.exporter is not None
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: service.exporter.position == last, what="export")  # type: ignore[union-attr]
        await asyncio.sleep(0.01)  # back in its wait for the next wake-up
        await stops_when_woken(service.exporter.wake, service.exporter.stop)
        await service()
        assert service.exporter._task is not None and service.exporter._task.cancelled()


@pytest.mark.parametrize("process", [True, False], ids=["own-process", "in-process"])
async def test_a_burst_of_charges_is_exported_as_one_batch(tmp_path: Path, process: bool) -> None:
    """Every charge wakes the exporter; it lingers so that the burst lands in one batch (each
    batch costs fsyncs and a position write per format), not one batch per charge."""
    data = tmp_path / "data"
    # A linger far longer than 20 debits take, however slow the disk; a poll longer than the
    # test, so only a wake-up can start the export.
    opts = RecordOptions(formats=("jsonl",), poll_interval_s=30.0, linger_s=2.0, process=process)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        service = await records.start(engine, engine.store, data, opts)
        exporter = service.exporter
        assert exporter is not None
        # Its first (empty) pass is done; it waits for a wake-up.
        await eventually(lambda: service.status()["export"].get("position") == 0, what="start")
        await asyncio.sleep(0.05)
        await debits(engine, "alice", 20, "a")
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: exporter.position == last, timeout_s=10, what="export")
        assert exporter.batches <= 2  # one, or two if the first read met the first debits
        await service()
