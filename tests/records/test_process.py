"""The exporter in its own process: it exports what the in-process one does, its faults never
reach charging, it is started again when it dies, and it does not outlive the charging process."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quotaflow import records
from quotaflow.engine import Engine
from quotaflow.records import RecordOptions, RecordService, _process
from quotaflow.records._process import ExporterProcess, ProcessSpec
from quotaflow.server import Server
from quotaflow.store import StoreUnavailable
from tests.conftest import free_port, server_config
from tests.core.test_crash import start as start_server
from tests.records.harness import (
    debits,
    eventually,
    provision,
    running_engine,
    serve_routes,
    stored,
)
from tests.records.test_export import exported

IDENTITIES = {"msisdn": "4670alice", "imsi": "00101alice"}


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def _three_exported(engine: Engine, data: Path) -> tuple[RecordService, ExporterProcess]:
    """A records service with its exporter process, once three debits are in the files."""
    await provision(engine, "alice")
    service = await records.start(engine, engine.store, data, RecordOptions())
    exporter = service.exporter
    assert isinstance(exporter, ExporterProcess)
    await debits(engine, "alice", 3, "a")
    last = stored(engine)[-1]["seq"]
    await eventually(lambda: exporter.position == last, timeout_s=15, what="export")
    return service, exporter


async def test_a_killed_exporter_process_is_started_again_and_loses_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    opts = RecordOptions(poll_interval_s=0.05)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        service = await records.start(engine, engine.store, data, opts)
        exporter = service.exporter
        assert isinstance(exporter, ExporterProcess)
        await debits(engine, "alice", 5, "a")
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: exporter.position == last, what="first export")
        pid = exporter.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        await debits(engine, "alice", 5, "b")  # charging goes on while it is down
        last = stored(engine)[-1]["seq"]
        await eventually(
            lambda: exporter.position == last and exporter.pid != pid,
            timeout_s=15,
            what="a new exporter process catching up",
        )
        status = service.status()["export"]
        assert status["process"]["restarts"] == 1
        assert status["process"]["last_exit_code"] == -signal.SIGKILL
        assert await exporter.seal() == 1
        await service()
        assert _gone(pid) and exporter.pid is not None and _gone(exporter.pid)
    lines = exported(data / "records" / "jsonl")
    assert [r["seq"] for r in lines] == list(range(lines[0]["seq"], last + 1))
    assert len(lines) == 10 and all(r["identities"] == IDENTITIES for r in lines)
    key = records.load_or_create_key(data / "keys").public_key()
    report = records.verify(data / "records" / "jsonl", key)
    assert report.ok and report.records == 10, report.problems


async def test_an_exporter_that_cannot_start_stops_no_charge_and_catches_up_once_it_can(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    blocker = data / "records"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")  # the exporter cannot make its folder: it exits
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        service = await records.start(engine, engine.store, data, RecordOptions())
        exporter = service.exporter
        assert isinstance(exporter, ExporterProcess)
        async with (
            serve_routes(records.routes(service)) as url,
            httpx.AsyncClient(base_url=url, timeout=5) as http,
        ):
            await debits(engine, "alice", 3, "a")  # charged, its records wait in the table
            await eventually(lambda: exporter.restarts >= 1, timeout_s=15, what="a failed start")
            state = (await http.get("/v1/cdrs/export")).json()["export"]
            assert state["process"]["running"] is False and state["process"]["last_exit_code"]
            r = await http.post("/v1/cdrs/export/seal")
            assert r.status_code == 503, r.text
            assert "not running" in r.json()["error"]["message"]
            blocker.unlink()
            last = stored(engine)[-1]["seq"]
            await eventually(lambda: exporter.position == last, timeout_s=20, what="catch-up")
            sealed = await http.post("/v1/cdrs/export/seal")
            assert sealed.status_code == 200 and sealed.json()["sealed_files"] == 1
        await service()
    assert [r["seq"] for r in exported(data / "records" / "jsonl")] == [
        r["seq"] for r in stored(engine)
    ]


def test_the_exporter_process_exits_when_the_charging_process_is_killed(tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(tmp_path / "data", port)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            state = httpx.get(f"{base}/v1/cdrs/export", timeout=5).json()["export"]
            pid = state["process"]["pid"] if state["process"]["running"] else None
            time.sleep(0.05)
        assert pid is not None, "the exporter process did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "the exporter process outlived the charging process"
    finally:
        proc.kill()
        proc.wait()


def test_a_spec_the_exporter_would_refuse_is_refused_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        ProcessSpec(db_path="x", folders={"jsonl": "y"}, key_dir="k", batch_records_max=0)
    spec = ProcessSpec(db_path="x", folders={"jsonl": str(tmp_path)}, key_dir=str(tmp_path))
    assert ProcessSpec.decode(spec.encode()) == spec


@pytest.mark.parametrize("process", [True, False], ids=["own-process", "in-process"])
async def test_a_wake_up_that_finds_nothing_does_not_leave_the_next_charge_to_the_poll(
    tmp_path: Path, process: bool
) -> None:
    """A top-up wakes the exporter but writes no record: the charge after it must still be
    exported by its own wake-up, not by the poll (longer than the test)."""
    data = tmp_path / "data"
    opts = RecordOptions(poll_interval_s=30.0, linger_s=0.05, process=process)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        service = await records.start(engine, engine.store, data, opts)
        await eventually(lambda: "position" in service.status()["export"], timeout_s=15)
        before = len(stored(engine))
        topup = {"subscriber_id": "alice", "unit": "octets", "amount": 1000}
        await engine.admin("topup", "t-x", topup)
        await asyncio.sleep(0.3)  # its wake-up found nothing
        assert len(stored(engine)) == before
        await debits(engine, "alice", 1, "c")
        last = stored(engine)[-1]["seq"]
        assert service.exporter is not None
        await eventually(lambda: service.exporter.position == last, what="a woken export")  # type: ignore[union-attr]
        await service()


async def test_an_exporter_that_says_something_unreadable_is_stopped_and_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    babbler = tmp_path / "babbler.sh"  # one line that is not JSON, then the real exporter
    babbler.write_text(f'#!/bin/sh\necho "not json"\nexec {sys.executable} "$@"\n')
    babbler.chmod(0o755)
    monkeypatch.setattr(_process.sys, "executable", str(babbler))
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        service = await records.start(engine, engine.store, data, RecordOptions())
        exporter = service.exporter
        assert isinstance(exporter, ExporterProcess)
        await eventually(lambda: exporter.restarts >= 2, timeout_s=15, what="restarts")
        await debits(engine, "alice", 2, "a")  # charging is not held up by any of it
        assert exporter.last_exit == -signal.SIGKILL
        started = time.monotonic()
        await service()
        assert time.monotonic() - started < 5  # not the kill timeout
        assert exporter.pid is not None and _gone(exporter.pid)


async def test_a_seal_that_fails_in_the_exporter_answers_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        service, exporter = await _three_exported(engine, data)
        (part,) = (data / "records" / "jsonl").glob("*.part")
        part.unlink()
        part.mkdir()  # the open file's name is a folder: the seal fails
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="could not seal"):
            await exporter.seal()
        assert time.monotonic() - started < 5
        assert exporter.running  # the exporter itself goes on
        await service()


async def test_metrics_show_the_exporter_and_how_far_the_files_are(tmp_path: Path) -> None:
    srv = Server(server_config(tmp_path / "data"))
    await srv.start()
    try:
        await provision(srv.engine, "alice")
        await debits(srv.engine, "alice", 3, "a")
        last = stored(srv.engine)[-1]["seq"]
        url = f"http://{srv.cfg.http_host}:{srv.cfg.http_port}/metrics"
        async with httpx.AsyncClient(timeout=5) as http:

            async def exported_to_last() -> bool:
                text = (await http.get(url)).text
                return f"quotaflow_records_export_position {float(last)}" in text

            await eventually(exported_to_last, timeout_s=15, what="position on /metrics")
            text = (await http.get(url)).text
        assert "quotaflow_records_exporter_up 1.0" in text
        assert "quotaflow_records_exporter_restarts_total 0.0" in text
        assert "quotaflow_records_export_errors_total 0.0" in text
    finally:
        await srv.stop()


@pytest.fixture
def deaf_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An 'exporter' that never reads its input, so never sees its end (one stuck in a write)."""
    deaf = tmp_path / "deaf.sh"
    deaf.write_text("#!/bin/sh\nexec sleep 120\n")
    deaf.chmod(0o755)
    monkeypatch.setattr(_process.sys, "executable", str(deaf))
    monkeypatch.setattr(_process, "STOP_TIMEOUT_S", 1.0)


def _spec(tmp_path: Path) -> ProcessSpec:
    return ProcessSpec(
        db_path=str(tmp_path / "db"),
        folders={"jsonl": str(tmp_path / "out")},
        key_dir=str(tmp_path / "keys"),
    )


async def _no_identities(sids: list[str]) -> dict[str, dict[str, str]]:
    return {sid: {} for sid in sids}


@pytest.mark.usefixtures("deaf_exporter")
@pytest.mark.parametrize("when", ["running", "spawning"])
async def test_a_stop_kills_an_exporter_that_does_not_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Whenever the stop comes, even while the process is being spawned (a server of a few GB
    takes a while): the process current at the timeout is killed, and the stop returns."""
    if when == "spawning":
        real = _process._spawn

        def slow_spawn(spec: ProcessSpec) -> Any:
            time.sleep(0.3)
            return real(spec)

        monkeypatch.setattr(_process, "_spawn", slow_spawn)
    exporter = ExporterProcess(_spec(tmp_path), _no_identities)
    await exporter.start()
    if when == "running":
        await eventually(lambda: exporter.pid is not None, what="spawned")
    else:
        await asyncio.sleep(0.1)
        assert exporter.pid is None
    started = time.monotonic()
    async with asyncio.timeout(15):
        await exporter.stop()
    assert time.monotonic() - started < 5
    assert exporter.pid is not None and _gone(exporter.pid)
    assert exporter.last_exit == -signal.SIGKILL
    await exporter.stop()  # again: nothing left to do


async def test_a_seal_asked_just_before_a_stop_gets_its_answer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        service, exporter = await _three_exported(engine, data)
        sealing = asyncio.create_task(exporter.seal())
        await asyncio.sleep(0)  # the request is written
        await service()
        assert await sealing == 1
    assert len(list((data / "records" / "jsonl").glob("*.manifest.json"))) == 1


def test_restarts_under_uvloop_never_close_a_descriptor_reused_since(tmp_path: Path) -> None:
    """A pipe of a killed exporter must be closed once, by its owner: closing it again later
    (say at a garbage collection) closed whatever reused the number, here a SQLite WAL."""
    import uvloop

    async def main() -> None:
        exporter = ExporterProcess(_spec(tmp_path), _no_identities)
        await exporter.start()
        try:
            for _ in range(3):
                await eventually(lambda: exporter.running, timeout_s=15, what="running")
                pid = exporter.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await eventually(lambda old=pid: exporter.pid != old, timeout_s=15, what="restart")
            other = sqlite3.connect(tmp_path / "other.sqlite3", isolation_level=None)
            other.execute("PRAGMA journal_mode=WAL")
            other.execute("CREATE TABLE t (x)")
            await eventually(lambda: exporter.running, timeout_s=15, what="running again")
            gc.collect()
            await asyncio.sleep(0.1)
            for i in range(100):
                other.execute("INSERT INTO t VALUES (?)", (i,))
            assert other.execute("SELECT count(*) FROM t").fetchone() == (100,)
            other.close()
        finally:
            await exporter.stop()

    uvloop.run(main())


async def test_an_in_process_exporter_that_fails_to_start_lets_its_folders_go(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "records" / "csv").mkdir(parents=True)
    fd = os.open(data / "records" / "csv" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another exporter's
    try:
        async with running_engine(data) as engine:
            options = RecordOptions(process=False, formats=("jsonl", "csv"))
            with pytest.raises(RuntimeError, match="another exporter"):
                await records.start(engine, engine.store, data, options)
            probe = os.open(data / "records" / "jsonl" / ".lock", os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
            finally:
                os.close(probe)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "said", [b"not json\n", b'{"no": "kind"}\n', b'{"t": "ids"}\n'], ids=["garbage", "no-t", "no-n"]
)
def test_an_exporter_that_reads_something_unreadable_from_the_server_stops(
    tmp_path: Path, said: bytes
) -> None:
    """The real exporter process, told something it cannot read: it stops (the server starts a
    new one), rather than going on deaf or lingering after the server is gone."""
    spec = _spec(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "quotaflow.records", spec.encode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        first = orjson.loads(child.stdout.readline())
        assert first["t"] == "status"  # started and reported
        child.stdin.write(said)
        child.stdin.flush()
        assert child.wait(15) == 0
        assert child.stderr is not None and b"unreadable message" in child.stderr.read()
    finally:
        child.kill()
        child.wait()


def test_the_exporter_entry_point_refuses_to_be_run_without_its_spec() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quotaflow.records"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "started by quotaflow serve" in done.stderr
