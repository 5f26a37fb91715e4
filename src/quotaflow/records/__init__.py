"""Charging records: chained and signed export files, a NATS stream, verification, settlement.

Records are written by the store in the same commit as the debit they describe; this package
only reads them (by seq, from their own connection) and never changes a balance.
"""

from quotaflow.records._api import routes
from quotaflow.records._chain import CSV_COLUMNS, GENESIS
from quotaflow.records._keys import (
    KeyFileError,
    key_id,
    load_or_create_key,
    load_public_key,
    public_pem,
)
from quotaflow.records._nats import NatsOptions, NatsStreamer
from quotaflow.records._service import RecordOptions, RecordService, start
from quotaflow.records._settle import (
    Discrepancy,
    Rate,
    SettlementReport,
    Tariff,
    TariffError,
    settle_verify,
)
from quotaflow.records._source import RecordFilter, RecordSource
from quotaflow.records._verify import Problem, VerifyReport, verify
from quotaflow.records._writer import ChainWriter, Rotation

__all__ = [
    "CSV_COLUMNS",
    "GENESIS",
    "ChainWriter",
    "Discrepancy",
    "KeyFileError",
    "NatsOptions",
    "NatsStreamer",
    "Problem",
    "Rate",
    "RecordFilter",
    "RecordOptions",
    "RecordService",
    "RecordSource",
    "Rotation",
    "SettlementReport",
    "Tariff",
    "TariffError",
    "VerifyReport",
    "key_id",
    "load_or_create_key",
    "load_public_key",
    "public_pem",
    "routes",
    "settle_verify",
    "start",
    "verify",
]
