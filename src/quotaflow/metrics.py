"""Prometheus metrics shared by every part of the server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from quotaflow import NATIVE_MODE, __version__
from quotaflow.store import gc_policy
from quotaflow.tally import Latencies, Tally

REGISTRY = CollectorRegistry()
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

HTTP_REQUESTS = Counter(
    "quotaflow_http_requests",
    "Management API requests by route and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
# Counted per request in plain integers (tally.py), exported by _HotPathCollector below.
SESSION_STEPS = Tally()  # (interface, step, result)
_REQUEST_SECONDS: dict[str, Latencies] = {}
ENGINE_ERRORS = Counter(
    "quotaflow_engine_errors", "Refused requests by reason", ["code"], registry=REGISTRY
)


def request_seconds(interface: str) -> Latencies:
    """The latency histogram of an interface's requests, from request to durable answer."""
    found = _REQUEST_SECONDS.get(interface)
    if found is None:
        found = _REQUEST_SECONDS[interface] = Latencies(SECONDS_BUCKETS)
    return found


def _buckets(tally: Latencies) -> list[tuple[str, float]]:
    """A tally's counts as the cumulative buckets of a Prometheus histogram."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*tally.bounds_s, float("inf")), tally.counts, strict=True):
        cumulative += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
    return buckets


class _HotPathCollector:
    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        seconds = HistogramMetricFamily(
            "quotaflow_request_seconds",
            "Time from request to durable answer",
            labels=["interface"],
        )
        for interface, tally in sorted(_REQUEST_SECONDS.items()):
            seconds.add_metric([interface], _buckets(tally), tally.sum_s)
        yield seconds
        steps = CounterMetricFamily(
            "quotaflow_session_steps",
            "Charging session steps by interface, kind and per-service result",
            labels=["interface", "step", "result"],
        )
        for key, count in sorted(SESSION_STEPS.counts.items()):
            steps.add_metric(list(key), count)
        yield steps


REGISTRY.register(_HotPathCollector())


GC_PAUSE_SECONDS = Histogram(
    "quotaflow_gc_pause_seconds",
    "Passes of the cyclic garbage collector, which stop every thread (store/gc_policy.py)",
    ["generation"],
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
_GC_PAUSES = [GC_PAUSE_SECONDS.labels(str(g)) for g in range(3)]
gc_policy.observers.append(lambda generation, seconds: _GC_PAUSES[generation].observe(seconds))


BUILD = Info("quotaflow_build", "Version; whether the hot path runs compiled", registry=REGISTRY)
BUILD.info({"version": __version__, "native": NATIVE_MODE.split(" ", 1)[0]})


class _StoreCollector:
    """Exports the store's own counters (commits, rows, subscribers, sessions) as gauges."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, Any]] | None = None
        self.commit_seconds: Latencies | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        if self.source is None:
            return
        if self.commit_seconds is not None:
            commits = HistogramMetricFamily(
                "quotaflow_store_commit_seconds",
                "Time a group commit took to be durable: from its transaction's start on the "
                "event loop to the end of the WAL sync that covers it",
            )
            commits.add_metric([], _buckets(self.commit_seconds), self.commit_seconds.sum_s)
            yield commits
        stats = self.source()
        for key in (
            "seq",
            "pending_rows",
            "commits",
            "committed_rows",
            "subscribers",
            "sessions",
            "wal_frames",  # in the WAL at the last checkpoint (store/checkpointer.py)
            "wal_checkpoints",
            "wal_restarts",
            "wal_checkpoint_failures",
            "wal_checkpoint_db_syncs",  # the checkpointer's own syncs of the database file
            "wal_checkpoint_sync_failed",  # 1: such a sync failed, the WAL is no longer rewound
            "wal_syncs",  # fdatasync calls of the WAL by the store's syncer (store/walsync.py)
            "commit_busy_retries",  # write attempts that found the write lock taken
            "snapshots_forked",
            "snapshots_stored",
            "snapshot_failures",  # children and stores that failed (logged)
            "snapshot_seq",  # the stored snapshot's: a restart replays seq - snapshot_seq
            "snapshot_ids_files",  # the ids files it lists (store/snapshot_files.py)
        ):
            if isinstance(stats.get(key), int):
                yield GaugeMetricFamily(f"quotaflow_store_{key}", f"store {key}", value=stats[key])
        yield GaugeMetricFamily(
            "quotaflow_store_last_commit_seconds",
            "Duration of the last journal commit",
            value=float(stats.get("last_commit_s", 0.0)),
        )
        yield GaugeMetricFamily(
            "quotaflow_store_last_snapshot_fork_seconds",
            "The event loop's stall in the last snapshot's fork (it grows with the process)",
            value=float(stats.get("last_snapshot_fork_s", 0.0)),
        )
        yield GaugeMetricFamily(
            "quotaflow_store_failed",
            "1 when the journal failed",
            value=1 if stats.get("failed") else 0,
        )


_STORE = _StoreCollector()
REGISTRY.register(_STORE)
# process_resident_memory_bytes and friends (read from /proc at each scrape). With the GC policy
# (store/gc_policy.py) memory should follow the ledger's size; gc.get_freeze_count() would say
# more but walks every frozen object (49 ms at 5 million), on the event loop.
ProcessCollector(registry=REGISTRY)


class _RecordsCollector:
    """The records exporter's state: how far the files are, and whether its process runs."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        export = None if self.source is None else self.source().get("export")
        if not export:
            return
        yield GaugeMetricFamily(
            "quotaflow_records_export_position",
            "Every charging record up to this seq is in the export files (compare with "
            "quotaflow_store_seq)",
            value=int(export.get("position", 0)),
        )
        yield CounterMetricFamily(
            "quotaflow_records_export_batches",
            "Batches of records written to the export files",
            value=int(export.get("batches", 0)),
        )
        yield CounterMetricFamily(
            "quotaflow_records_export_errors",
            "Failed export steps (each retried)",
            value=int(export.get("errors", 0)),
        )
        process = export.get("process")
        if isinstance(process, dict):
            yield GaugeMetricFamily(
                "quotaflow_records_exporter_up",
                "1 while the exporter's own process runs and has reported",
                value=1 if process.get("running") else 0,
            )
            yield CounterMetricFamily(
                "quotaflow_records_exporter_restarts",
                "Times the exporter's process exited and was started again",
                value=int(process.get("restarts", 0)),
            )


_RECORDS = _RecordsCollector()
REGISTRY.register(_RECORDS)


def watch_records(status: Callable[[], dict[str, Any]]) -> None:
    """Export the records service's state at /metrics (the latest server started)."""
    _RECORDS.source = status


def watch_store(
    stats: Callable[[], dict[str, Any]], commit_seconds: Latencies | None = None
) -> None:
    """Export this store's figures at /metrics (the latest server started in the process)."""
    _STORE.source = stats
    _STORE.commit_seconds = commit_seconds
