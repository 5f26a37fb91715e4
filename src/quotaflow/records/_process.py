"""The file exporter in a process of its own, so that charging keeps its core.

Encoding each record as a line, chaining its SHA-256 and writing the files took about a fifth of
a Gy request's CPU when it ran on the charging process's thread and GIL. The exporter process
(`python -m quotaflow.records`) follows the cdr table through its own read-only SQLite
connection, exactly as the in-process exporter does after a start; it changes nothing in the
store, so a crash of it loses nothing: the charging process starts it again and it resumes from
its files' position.

The two talk over the child's stdin and stdout, one JSON object per line:
  charging -> exporter: {"t": "wake", "durable": N}  records up to seq N are durable: look now
                        (sent once the pipe is open, then after commits; without "durable":
                        no bound; before the first, the exporter reads nothing)
                        {"t": "seal", "n": N} seal the open files; answered by "sealed"
                        {"t": "ids", "n": N, "found": {...}}   identities asked for
                        end of file           stop (also when the charging process died)
  exporter -> charging: {"t": "status", "status": {...}}       after its start and each step
                        {"t": "ids", "n": N, "sids": [...]}    identities of a batch's subscribers
                        {"t": "sealed", "n": N, "sealed": K}
Identities are the charging process's (its subscribers are in its memory, not in a table).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson

from quotaflow.records._export import BATCH_RECORDS_MAX, LINGER_S, Exporter, IdentityLookup
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
GC_YOUNG_THRESHOLD: Final = 100_000
# Subscribers per identities question: answering one holds the charging loop about 0.5 ms.
IDS_PER_ASK: Final = 1000


@dataclass(slots=True)
class ProcessSpec:
    """What the exporter process needs, passed to it as one JSON argument."""

    db_path: str
    folders: dict[str, str]  # format -> folder
    key_dir: str
    rotation: dict[str, Any] = field(default_factory=lambda: asdict(Rotation()))
    poll_interval_s: float = 0.5
    batch_records_max: int = BATCH_RECORDS_MAX
    linger_s: float = LINGER_S
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


class _Child:
    """One exporter process and the ends of its pipes on this side's event loop. Once
    connected, the transports own the pipes' file objects (closing one closes its fd): they are
    never closed any other way, or a later close could hit a descriptor the number was reused
    for (a database file, a socket)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.reader = asyncio.StreamReader(limit=LINE_BYTES_MAX)
        self.writer: asyncio.WriteTransport | None = None
        self._read: asyncio.ReadTransport | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        reader = self.reader
        self._read, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stdout
        )
        self.writer, _ = await loop.connect_write_pipe(asyncio.Protocol, stdin)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, data: bytes) -> bool:
        writer = self.writer
        if writer is None or writer.is_closing() or not self.alive:
            return False
        writer.write(data)
        return True

    def close_input(self) -> None:
        """End of file for the exporter: it stops."""
        if self.writer is not None:
            self.writer.close()
        elif self.popen.stdin is not None:  # not handed to a transport
            self.popen.stdin.close()

    def close(self) -> None:
        """Both pipes, each exactly once, by whoever owns it."""
        self.close_input()
        if self._read is not None:
            self._read.close()
        elif self.popen.stdout is not None:
            self.popen.stdout.close()

    async def wait(self) -> int:
        return await asyncio.to_thread(self.popen.wait)


def _spawn(spec: ProcessSpec) -> subprocess.Popen[bytes]:
    # subprocess.Popen (vfork) on a thread: uvloop's spawn forks the whole server and holds the
    # event loop meanwhile, 0.1 s at 2 GB of memory and more with more.
    env = dict(os.environ)
    # The modules this process runs, wherever they came from (a source tree, PYTHONPATH).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(
        [sys.executable, "-m", "quotaflow.records", spec.encode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


class ExporterProcess:
    """The charging process's side: starts the exporter process, keeps it running, answers its
    questions, and shows its state (`position`, `status()`) as the exporter last reported it."""

    def __init__(
        self,
        spec: ProcessSpec,
        identities: IdentityLookup,
        durable_seq: Callable[[], int | None] | None = None,
    ) -> None:
        self.spec = spec
        self.identities = identities
        # The store's last durable seq: the exporter reads no record past it (RecordSource).
        self.durable_seq = durable_seq
        self.restarts = 0
        self.last_exit: int | None = None
        # The last state an exporter process reported; kept across a restart (its position is
        # still what the files hold) until the new one reports.
        self._status: dict[str, Any] = {}
        self._reported = False  # the current process has reported
        self._child: _Child | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._counter = itertools.count(1)
        self._sealing: dict[int, asyncio.Future[int]] = {}
        # A wake-up is written once per step of the exporter, however many charges ask; the
        # status it sends after each step answers it.
        self._woken = False
        self._wake_again = False

    async def start(self) -> None:
        """Starts the process and returns: charging does not wait for the exporter."""
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.popen.pid

    @property
    def running(self) -> bool:
        return self._reported and self._child is not None and self._child.alive

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
        durable = None if self.durable_seq is None else self.durable_seq()
        if self._send({"t": "wake"} if durable is None else {"t": "wake", "durable": durable}):
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
        except TimeoutError:
            raise StoreUnavailable("the record exporter did not answer the seal in time") from None
        finally:
            self._sealing.pop(n, None)

    async def stop(self) -> None:
        self._stopping.set()
        child = self._child
        if child is not None and child.writer is not None and child.alive:
            child.close_input()  # end of file: the exporter lets its write finish and exits
        # (A child still being started or connected is told by _run_once once it is.)
        task = self._task
        if task is None or task.done():
            return
        try:
            # The supervisor reads what the exporter still says (a seal's answer) until it
            # exits; asyncio.wait neither cancels the task nor swallows our own cancellation.
            await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if not task.done():
                self._kill_current("record exporter did not stop; killing it")
                await asyncio.wait({task}, timeout=5)
        finally:
            if not task.done():
                self._kill_current("record exporter left running at a stop; killing it")
                task.cancel()

    def _kill_current(self, why: str) -> None:
        """Kill whichever exporter process is current (it may have been started since)."""
        child = self._child
        if child is not None and child.alive:
            log.error(why, extra={"pid": child.popen.pid})
            child.popen.kill()

    # ------------------------------------------------------------------ supervision

    def _send(self, doc: dict[str, Any]) -> bool:
        return self._child is not None and self._child.send(_line(doc))

    async def _supervise(self) -> None:
        delay_s = RESTART_S_MIN
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("record exporter process failed")
            if self._stopping.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started > 60:
                delay_s = RESTART_S_MIN  # it ran a while: a new fault, not the same one
            log.error(
                "record exporter exited; starting it again",
                extra={"exit_code": self.last_exit, "after_s": delay_s},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
            delay_s = min(delay_s * 2, RESTART_S_MAX)

    async def _run_once(self) -> None:
        self._reported = False
        self._woken = self._wake_again = False
        child = _Child(await asyncio.to_thread(_spawn, self.spec))
        self._child = child
        try:
            await child.connect()
            if self._stopping.is_set():  # stopped while it was being started
                child.close_input()
            else:
                self.wake()  # its first bound: until then it reads nothing
            while True:
                try:
                    line = await child.reader.readline()
                except ValueError:  # a line over LINE_BYTES_MAX
                    log.error("record exporter sent an overlong line; stopping it")
                    child.popen.kill()
                    break
                if not line:
                    break
                try:
                    msg = orjson.loads(line)
                    kind, n = msg["t"], msg.get("n")
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    log.error(
                        "record exporter said something unreadable; stopping it",
                        extra={"line": line[:200]},
                    )
                    child.popen.kill()
                    break
                try:
                    await self._on_message(kind, n, msg)
                except Exception:
                    log.exception("record exporter's message could not be handled; stopping it")
                    child.popen.kill()
                    break
        finally:
            if child.alive:
                child.close_input()
            self.last_exit = await child.wait()
            child.close()
            for future in self._sealing.values():
                if not future.done():
                    future.set_exception(
                        StoreUnavailable("the record exporter process exited while sealing")
                    )

    async def _on_message(self, kind: Any, n: Any, msg: dict[str, Any]) -> None:
        if kind == "status":
            self._status = msg["status"]
            self._reported = True
            self._woken = False
            if self._wake_again:  # charges since the wake-up this step answered
                self._wake_again = False
                self.wake()
        elif kind == "ids":
            try:
                found = await self.identities(msg["sids"])
            except Exception as exc:  # the exporter's step fails and is retried
                log.exception("identities for the record exporter failed")
                self._send({"t": "ids", "n": n, "error": repr(exc)})
            else:
                self._send({"t": "ids", "n": n, "found": found})
        elif kind == "sealed":
            future = self._sealing.get(n)
            if future is not None and not future.done():
                if "error" in msg:
                    future.set_exception(
                        StoreUnavailable(f"the record exporter could not seal: {msg['error']}")
                    )
                else:
                    future.set_result(int(msg["sealed"]))


# ---------------------------------------------------------------------- the exporter process


class _Parent:
    """The exporter process's side of the pipe."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._asked: dict[int, asyncio.Future[dict[str, dict[str, str]]]] = {}
        self.gone = asyncio.Event()
        self.sealing: set[asyncio.Task[None]] = set()  # answered before this process stops
        # The last durable seq the charging process sent: no record past it is read.
        self.durable: int | None = 0

    def send(self, doc: dict[str, Any]) -> None:
        # Blocking and whole: the lines are small, and the charging process reads them at once.
        data = _line(doc)
        with contextlib.suppress(BrokenPipeError):  # the charging process is gone: we stop
            while data:
                data = data[os.write(sys.stdout.fileno(), data) :]

    async def identities(self, sids: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for at in range(0, len(sids), IDS_PER_ASK):
            found.update(await self._ask(sids[at : at + IDS_PER_ASK]))
        return found

    async def _ask(self, sids: list[str]) -> dict[str, dict[str, str]]:
        n = next(self._counter)
        future: asyncio.Future[dict[str, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        if self.gone.is_set():
            raise ConnectionError("the charging process is gone")
        self._asked[n] = future
        try:
            self.send({"t": "ids", "n": n, "sids": sids})
            return await future
        finally:
            self._asked.pop(n, None)

    async def listen(self, exporter: Exporter) -> None:
        """Until the end of the pipe, or anything unreadable on it: either way this process
        stops, and the charging process starts a new one if it still wants one."""
        loop = asyncio.get_running_loop()
        try:
            reader = asyncio.StreamReader(limit=LINE_BYTES_MAX)
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
            )
            while line := await reader.readline():
                msg = orjson.loads(line)
                kind = msg["t"]
                if kind == "wake":
                    self.durable = msg.get("durable")
                    exporter.wake()
                elif kind == "ids":
                    future = self._asked.get(msg["n"])
                    if future is not None and not future.done():
                        if "error" in msg:
                            future.set_exception(RuntimeError(msg["error"]))
                        else:
                            future.set_result(msg["found"])
                elif kind == "seal":
                    task = loop.create_task(self._seal(exporter, msg["n"]))
                    self.sealing.add(task)
                    task.add_done_callback(self.sealing.discard)
        except Exception:
            log.exception("unreadable message from the charging process; stopping")
        finally:
            self.gone.set()
            for future in self._asked.values():
                if not future.done():
                    future.set_exception(ConnectionError("the charging process is gone"))

    async def _seal(self, exporter: Exporter, n: int) -> None:
        try:
            sealed = await exporter.seal()
        except Exception as exc:
            log.exception("sealing failed")
            self.send({"t": "sealed", "n": n, "error": repr(exc)})
            return
        self.send({"t": "status", "status": exporter.status()})
        self.send({"t": "sealed", "n": n, "sealed": sealed})


async def _serve(spec: ProcessSpec) -> None:
    key = load_or_create_key(spec.key_dir)
    rotation = Rotation(**spec.rotation)
    writers = [ChainWriter(folder, fmt, key, rotation) for fmt, folder in spec.folders.items()]
    parent = _Parent()
    source = RecordSource(db_path=spec.db_path, durable_seq=lambda: parent.durable)
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
        # A seal asked for before the end of the pipe is done and answered (the charging
        # process still reads until this process exits).
        await asyncio.gather(*parent.sealing, return_exceptions=True)
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
    # A Ctrl-C at the terminal, or a service manager's SIGTERM, reaches the whole process group:
    # the charging process stops, and this one with it, at the end of its pipe (SIGKILL still
    # kills it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    # A batch is thousands of short-lived dicts without cycles, which the default young
    # threshold (700) had the collector rescan while the batch was written (12% of this
    # process's CPU in perf); what the imports made is frozen, never scanned again.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 100)
    asyncio.run(_serve(spec))
    return 0
