"""The file exporter in a process of its own, so that charging keeps its core.

Encoding each record as a line, chaining its SHA-256 and writing the files took about a fifth of
a Gy request's CPU when it ran on the charging process's thread and GIL. The exporter process
(`python -m quotaflow.records`) follows the cdr table through its own read-only SQLite
connection, exactly as the in-process exporter does after a start; it changes nothing in the
store, so a crash of it loses nothing: the charging process starts it again and it resumes from
its files' position.

The two talk over the child's stdin and stdout, one JSON object per line:
  charging -> exporter: {"t": "wake"}        records were committed: look now
                        {"t": "seal", "n": N} seal the open files; answered by "sealed"
                        {"t": "ids", "n": N, "found": {...}}   identities asked for
                        end of file           stop (also when the charging process died)
  exporter -> charging: {"t": "status", "status": {...}}       after its start and each batch
                        {"t": "ids", "n": N, "sids": [...]}    identities of a batch's subscribers
                        {"t": "sealed", "n": N, "sealed": K}
Identities are the charging process's (its subscribers are in its memory, not in a table).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson

from quotaflow.records._export import Exporter, IdentityLookup
from quotaflow.records._keys import load_or_create_key
from quotaflow.records._source import RecordSource
from quotaflow.records._writer import ChainWriter, Rotation
from quotaflow.store.base import StoreUnavailable

log = logging.getLogger("quotaflow.records")

LINE_BYTES_MAX: Final = 64 * 1024 * 1024  # an identities answer for a batch of 100,000
# Below charging's priority: on a machine short of CPU the exporter falls behind (its records
# wait in the cdr table) rather than charging answering late.
NICE: Final = 5
RESTART_S_MIN: Final = 0.5
RESTART_S_MAX: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0  # for the batch under way to finish; then it is killed
SEAL_TIMEOUT_S: Final = 60.0


@dataclass(slots=True)
class ProcessSpec:
    """What the exporter process needs, passed to it as one JSON argument."""

    db_path: str
    folders: dict[str, str]  # format -> folder
    key_dir: str
    rotation: dict[str, Any] = field(default_factory=lambda: asdict(Rotation()))
    poll_interval_s: float = 0.5
    batch_records_max: int = 5000
    linger_s: float = 0.1
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        # The exporter's own checks, here too: a spec it refuses would only restart it forever.
        assert self.folders and self.poll_interval_s > 0 and self.linger_s >= 0
        assert 0 < self.batch_records_max <= 100_000

    def encode(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def decode(cls, text: str) -> ProcessSpec:
        return cls(**orjson.loads(text))


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc) + b"\n"


class ExporterProcess:
    """The charging process's side: starts the exporter process, keeps it running, answers its
    questions, and shows its state (`position`, `status()`) as the exporter last reported it."""

    def __init__(self, spec: ProcessSpec, identities: IdentityLookup) -> None:
        self.spec = spec
        self.identities = identities
        self.restarts = 0
        self.last_exit: int | None = None
        self._status: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._counter = itertools.count(1)
        self._sealing: dict[int, asyncio.Future[int]] = {}
        # A wake-up is written once per batch of the exporter, however many charges ask.
        self._woken = False
        self._wake_again = False

    async def start(self) -> None:
        """Starts the process and returns: charging does not wait for the exporter."""
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return bool(self._status) and self._proc is not None and self._proc.returncode is None

    @property
    def position(self) -> int:
        """Every record up to this seq is in the files (0 until the process first says)."""
        return int(self._status.get("position", 0))

    @property
    def batches(self) -> int:
        return int(self._status.get("batches", 0))

    def status(self) -> dict[str, Any]:
        return {
            **self._status,
            "process": {
                "pid": self.pid,
                "running": self.running,
                "restarts": self.restarts,
                "last_exit_code": self.last_exit,
            },
        }

    def wake(self) -> None:
        if self._woken:
            self._wake_again = True
            return
        if self._send({"t": "wake"}):
            self._woken = True

    async def seal(self) -> int:
        """Seal every open file now; returns how many were sealed."""
        n = next(self._counter)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self.running or not self._send({"t": "seal", "n": n}):
            raise StoreUnavailable("the record exporter process is not running")
        self._sealing[n] = future
        try:
            async with asyncio.timeout(SEAL_TIMEOUT_S):
                return await future
        finally:
            self._sealing.pop(n, None)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()  # end of file: the exporter finishes its batch and exits
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                log.error("record exporter did not stop; killing it", extra={"pid": proc.pid})
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ supervision

    def _send(self, doc: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return False
        if proc.stdin.is_closing():
            return False
        proc.stdin.write(_line(doc))
        return True

    async def _supervise(self) -> None:
        delay_s = RESTART_S_MIN
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("record exporter process failed")
            if self._stopping:
                return
            self.restarts += 1
            if time.monotonic() - started > 60:
                delay_s = RESTART_S_MIN  # it ran a while: a new fault, not the same one
            log.error(
                "record exporter exited; starting it again",
                extra={"exit_code": self.last_exit, "after_s": delay_s},
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESTART_S_MAX)

    async def _run_once(self) -> None:
        self._status = {}
        self._woken = self._wake_again = False
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quotaflow.records",
            self.spec.encode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_BYTES_MAX,
        )
        self._proc = proc
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                await self._on_message(orjson.loads(line))
        finally:
            self.last_exit = await proc.wait()
            for future in self._sealing.values():
                if not future.done():
                    future.set_exception(
                        StoreUnavailable("the record exporter process exited while sealing")
                    )

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "status":
            self._status = msg["status"]
            self._woken = False
            if self._wake_again:  # charges since the wake-up this batch answered
                self._wake_again = False
                self.wake()
        elif kind == "ids":
            found = await self.identities(msg["sids"])
            self._send({"t": "ids", "n": msg["n"], "found": found})
        elif kind == "sealed":
            future = self._sealing.get(msg["n"])
            if future is not None and not future.done():
                future.set_result(int(msg["sealed"]))


# ---------------------------------------------------------------------- the exporter process


class _Parent:
    """The exporter process's side of the pipe."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._asked: dict[int, asyncio.Future[dict[str, dict[str, str]]]] = {}
        self.gone = asyncio.Event()

    def send(self, doc: dict[str, Any]) -> None:
        # Blocking and whole: the lines are small, and the charging process reads them at once.
        data = _line(doc)
        with contextlib.suppress(BrokenPipeError):  # the charging process is gone: we stop
            while data:
                data = data[os.write(sys.stdout.fileno(), data) :]

    async def identities(self, sids: list[str]) -> dict[str, dict[str, str]]:
        n = next(self._counter)
        future: asyncio.Future[dict[str, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._asked[n] = future
        try:
            self.send({"t": "ids", "n": n, "sids": sids})
            return await future
        finally:
            self._asked.pop(n, None)

    async def listen(self, exporter: Exporter) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_BYTES_MAX)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
        )
        tasks: set[asyncio.Task[None]] = set()
        while line := await reader.readline():
            msg = orjson.loads(line)
            kind = msg["t"]
            if kind == "wake":
                exporter.wake()
            elif kind == "ids":
                future = self._asked.get(msg["n"])
                if future is not None and not future.done():
                    future.set_result(msg["found"])
            elif kind == "seal":
                task = loop.create_task(self._seal(exporter, msg["n"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        self.gone.set()
        for future in self._asked.values():
            if not future.done():
                future.set_exception(ConnectionError("the charging process is gone"))

    async def _seal(self, exporter: Exporter, n: int) -> None:
        sealed = await exporter.seal()
        self.send({"t": "status", "status": exporter.status()})
        self.send({"t": "sealed", "n": n, "sealed": sealed})


async def _serve(spec: ProcessSpec) -> None:
    key = load_or_create_key(spec.key_dir)
    rotation = Rotation(**spec.rotation)
    writers = [ChainWriter(folder, fmt, key, rotation) for fmt, folder in spec.folders.items()]
    parent = _Parent()
    source = RecordSource(db_path=spec.db_path)
    exporter = Exporter(
        parent.identities,
        source,
        writers,
        poll_interval_s=spec.poll_interval_s,
        batch_records_max=spec.batch_records_max,
        linger_s=spec.linger_s,
    )

    def report() -> None:
        parent.send({"t": "status", "status": exporter.status()})

    exporter.on_step = report
    listening = asyncio.get_running_loop().create_task(parent.listen(exporter))
    try:
        await exporter.start()
        report()
        await parent.gone.wait()
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await exporter.stop()
        source.close()


def main(argv: list[str]) -> int:
    """`python -m quotaflow.records SPEC`: run by the charging process, not by hand."""
    from quotaflow import logs

    if len(argv) != 1:
        print(
            "usage: python -m quotaflow.records SPEC (started by quotaflow serve)", file=sys.stderr
        )
        return 2
    spec = ProcessSpec.decode(argv[0])
    logs.setup(spec.log_level)
    # A Ctrl-C at the terminal reaches the whole process group: the charging process stops, and
    # this one with it, by the end of its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    asyncio.run(_serve(spec))
    return 0
