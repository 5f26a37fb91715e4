"""Server configuration: a TOML file, then command-line flags on top. Every default is stated."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quotaflow.diameter.gy_config import GyConfig
from quotaflow.engine import GrantPolicy, UnitGrantLimits
from quotaflow.http_server import HTTP_SERVERS, HttpServerKind
from quotaflow.interop.service import Operator, OperatorDirectory
from quotaflow.ledger import Limits, Unit
from quotaflow.nchf import NchfConfig
from quotaflow.rating import TariffBook, TariffError, load_text
from quotaflow.records import NatsOptions, RecordOptions, Rotation


class ConfigError(ValueError):
    """A configuration that cannot be used; the server refuses to start with it."""


@dataclass(slots=True)
class DiameterPeer:
    origin_host: str
    address: str | None = None


@dataclass(slots=True)
class Config:
    data_dir: Path = Path("./quotaflow-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The HTTP server of every HTTP listener (see http_server.py).
    http_server: HttpServerKind = "granian"
    # A separate listener for the 5G SBI (Nchf); None serves it on the HTTP listener.
    sbi_host: str | None = None
    sbi_port: int | None = None
    diameter_enabled: bool = True
    diameter_host: str = "127.0.0.1"
    diameter_port: int = 3868
    diameter_identity: str = "ocs.quotaflow.local"
    diameter_realm: str = "quotaflow.local"
    # Empty: the development default, any peer that connects from loopback is accepted.
    diameter_peers: list[DiameterPeer] = field(default_factory=list)
    diameter_gy: GyConfig = field(default_factory=GyConfig)
    nchf_enabled: bool = True
    nchf: NchfConfig = field(default_factory=NchfConfig)
    snapshot_every_ops: int = 500_000
    log_level: str = "INFO"
    grants: GrantPolicy = field(default_factory=GrantPolicy)
    # Tariffs from this TOML file (then read-only through the API); None: the built-in tariff,
    # or what was last set through /v1/tariffs.
    tariff_file: Path | None = None
    tariffs: TariffBook | None = None
    records: RecordOptions = field(default_factory=RecordOptions)
    operators: OperatorDirectory = field(default_factory=OperatorDirectory)
    limits: Limits = field(default_factory=Limits)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _int(table: dict[str, Any], key: str, where: str, default: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.{key} must be a non-negative integer, got {value!r}")
    return value


def load(path: str | Path | None) -> Config:
    cfg = Config()
    if path is None:
        return cfg
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    server = _section(doc, "server")
    cfg.data_dir = Path(server.get("data_dir", cfg.data_dir))
    cfg.log_level = str(server.get("log_level", cfg.log_level)).upper()
    cfg.snapshot_every_ops = _int(server, "snapshot_every_ops", "server", cfg.snapshot_every_ops)
    http = _section(doc, "http")
    cfg.http_host = str(http.get("host", cfg.http_host))
    cfg.http_port = _int(http, "port", "http", cfg.http_port)
    server_kind = http.get("server", cfg.http_server)
    if server_kind not in HTTP_SERVERS:
        raise ConfigError(f"http.server must be one of {', '.join(HTTP_SERVERS)}")
    cfg.http_server = server_kind
    sbi = _section(doc, "sbi")
    if sbi:
        cfg.sbi_host = str(sbi.get("host", cfg.http_host))
        cfg.sbi_port = _int(sbi, "port", "sbi", 0)
    cfg.nchf_enabled = bool(sbi.get("enabled", True))
    dia = _section(doc, "diameter")
    cfg.diameter_enabled = bool(dia.get("enabled", cfg.diameter_enabled))
    cfg.diameter_host = str(dia.get("host", cfg.diameter_host))
    cfg.diameter_port = _int(dia, "port", "diameter", cfg.diameter_port)
    cfg.diameter_identity = str(dia.get("identity", cfg.diameter_identity))
    cfg.diameter_realm = str(dia.get("realm", cfg.diameter_realm))
    for i, peer in enumerate(dia.get("peers", [])):
        if not isinstance(peer, dict) or "origin_host" not in peer:
            raise ConfigError(f"diameter.peers[{i}] needs origin_host")
        cfg.diameter_peers.append(DiameterPeer(str(peer["origin_host"]), peer.get("address")))
    cfg.diameter_gy = _load_gy(_section(dia, "gy"))
    cfg.nchf = _load_nchf(_section(doc, "nchf"))
    _load_grants(cfg, _section(doc, "grants"))
    cfg.records = _load_records(_section(doc, "records"))
    _load_transfers(cfg, _section(doc, "transfers"))
    cfg.operators = _load_operators(_section(doc, "interop"))
    rating = _section(doc, "rating")
    if rating.get("tariff_file") is not None:
        cfg.tariff_file = Path(str(rating["tariff_file"]))
        load_tariffs(cfg)
    return cfg


def _load_operators(table: dict[str, Any]) -> OperatorDirectory:
    """[interop]: our operator id, and [[interop.operators]] the others we exchange with."""
    directory = OperatorDirectory(me=str(table.get("operator_id", "local")))
    for i, op in enumerate(table.get("operators", [])):
        where = f"interop.operators[{i}]"
        if not isinstance(op, dict) or not all(op.get(k) for k in ("id", "url", "token")):
            raise ConfigError(f"{where} needs id, url and token")
        if len(str(op["token"])) < 16:
            raise ConfigError(f"{where}.token must be at least 16 characters")
        directory.operators.append(
            Operator(
                id=str(op["id"]),
                url=str(op["url"]).rstrip("/"),
                token=str(op["token"]),
                msisdn_prefixes=tuple(str(p) for p in op.get("msisdn_prefixes", [])),
                imsi_prefixes=tuple(str(p) for p in op.get("imsi_prefixes", [])),
            )
        )
    return directory


def _load_transfers(cfg: Config, table: dict[str, Any]) -> None:
    """[transfers]: per_transfer, per_day and keep_min, each a table of unit = amount."""
    limits = cfg.limits.transfers
    for key in ("per_transfer", "per_day", "keep_min"):
        given = table.get(key)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise ConfigError(f"transfers.{key} must be a table of unit = amount")
        values = {}
        for unit_name in given:
            try:
                Unit(unit_name)
            except ValueError:
                raise ConfigError(f"transfers.{key}.{unit_name}: unknown unit") from None
            values[unit_name] = _int(given, unit_name, f"transfers.{key}", 0)
        getattr(limits, key).update(values)
    for unit_name, rule in (table.get("rewards") or {}).items():
        where = f"transfers.rewards.{unit_name}"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where} must be a table")
        try:
            Unit(unit_name)
            reward_unit = Unit(str(rule.get("reward_unit")))
        except ValueError:
            raise ConfigError(f"{where}: unknown unit") from None
        per_units = _int(rule, "per_units", where, 0)
        if per_units == 0:
            raise ConfigError(f"{where}.per_units must be positive")
        limits.rewards[unit_name] = {
            "per_units": per_units,
            "reward_unit": reward_unit.value,
            "amount": _int(rule, "amount", where, 0),
        }


def _load_records(table: dict[str, Any]) -> RecordOptions:
    """[records]: export formats and rotation; [records.nats]: the optional stream."""
    formats = table.get("formats", ["jsonl"])
    if (
        not isinstance(formats, list)
        or not formats
        or any(f not in ("jsonl", "csv") for f in formats)
    ):
        raise ConfigError('records.formats must be a list of "jsonl" and/or "csv"')
    rotation = Rotation(
        size_bytes_max=_int(table, "rotate_bytes", "records", 64 * 1024 * 1024) or 1,
        age_s_max=float(_int(table, "rotate_s", "records", 3600) or 1),
        records_max=_int(table, "rotate_records", "records", 100_000) or 1,
    )
    nats = None
    if "nats" in table:
        n = table["nats"]
        if not isinstance(n, dict):
            raise ConfigError("[records.nats] must be a table")
        defaults = NatsOptions()
        nats = NatsOptions(
            url=str(n.get("url", defaults.url)),
            stream=str(n.get("stream", defaults.stream)),
            subject=str(n.get("subject", defaults.subject)),
        )
    for key in ("export", "process"):
        if not isinstance(table.get(key, True), bool):
            raise ConfigError(f"records.{key} must be true or false")
    return RecordOptions(
        export=table.get("export", True),
        process=table.get("process", True),
        formats=tuple(formats),
        rotation=rotation,
        nats=nats,
        retention_days=_int(table, "retention_days", "records", 0),
    )


def _load_gy(gy: dict[str, Any]) -> GyConfig:
    """[diameter.gy]: Final-Unit-Action and its details, thresholds, units, currency."""
    settings: dict[str, Any] = {}
    try:
        for key in ("final_unit_action", "redirect_address_type", "redirect_server_address"):
            if key in gy:
                settings[key] = str(gy[key])
        for key in ("restricted_validity_s", "quota_threshold_percent", "currency_code"):
            if key in gy:
                settings[key] = _int(gy, key, "diameter.gy", 0)
        for key in ("restriction_filter_rules", "filter_ids"):
            if key in gy:
                settings[key] = tuple(str(item) for item in gy[key])
        for key in ("free_rating_groups", "rated_rating_groups"):
            if key in gy:
                settings[key] = frozenset(int(rg) for rg in gy[key])
        if "release_on_peer_restart" in gy:
            settings["release_on_peer_restart"] = gy["release_on_peer_restart"]
        if "rating_group_units" in gy:
            settings["rating_group_units"] = {
                int(rg): Unit(u) for rg, u in gy["rating_group_units"].items()
            }
        return GyConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"diameter.gy: {exc}") from None


def _load_nchf(table: dict[str, Any]) -> NchfConfig:
    """[nchf]: the 5G CHF's thresholds, offline groups, units, limits and ChargingDataRef key."""
    settings: dict[str, Any] = {}
    known = {
        "api_root",
        "final_unit_action",
        "ref_key",
        "offline_rating_groups",
        "rating_group_units",
        "notify_http2",
        "notify_timeout_s",
        *NCHF_INTS,
    }
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"nchf: unknown key {unknown[0]!r}")
    try:
        for key in ("api_root", "final_unit_action"):
            if key in table:
                settings[key] = str(table[key])
        if "ref_key" in table:
            key_text = str(table["ref_key"])
            if len(key_text) < 16:
                raise ValueError("ref_key must be at least 16 characters")
            settings["ref_key"] = key_text.encode()
        for key in NCHF_INTS:
            if key in table:
                settings[key] = _int(table, key, "nchf", 0)
        if "offline_rating_groups" in table:
            settings["offline_rating_groups"] = frozenset(
                int(rg) for rg in table["offline_rating_groups"]
            )
        if "rating_group_units" in table:
            settings["rating_group_units"] = {
                int(rg): Unit(u) for rg, u in table["rating_group_units"].items()
            }
        if "notify_http2" in table:
            if not isinstance(table["notify_http2"], bool):
                raise ValueError("notify_http2 must be true or false")
            settings["notify_http2"] = table["notify_http2"]
        if "notify_timeout_s" in table:
            timeout = table["notify_timeout_s"]
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise ValueError("notify_timeout_s must be a positive number")
            settings["notify_timeout_s"] = float(timeout)
        return NchfConfig(**settings)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"nchf: {exc}") from None


NCHF_INTS = (
    "online_threshold_percent",
    "offline_threshold_octets",
    "offline_threshold_seconds",
    "offline_threshold_events",
    "quota_holding_time_s",
    "body_bytes_max",
    "units_per_request_max",
    "notify_in_flight_max",
    "tracked_sessions_max",
)


def load_tariffs(cfg: Config) -> None:
    """Read cfg.tariff_file; a tariff that cannot be used stops the server with its line."""
    if cfg.tariff_file is None:
        return
    try:
        text = cfg.tariff_file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read tariff file {cfg.tariff_file}: {exc}") from None
    try:
        cfg.tariffs = load_text(text, str(cfg.tariff_file))
    except TariffError as exc:
        raise ConfigError(str(exc)) from None


def _load_grants(cfg: Config, grants: dict[str, Any]) -> None:
    policy = cfg.grants
    policy.validity_s = _int(grants, "validity_s", "grants", policy.validity_s)
    policy.grace_s = _int(grants, "grace_s", "grants", policy.grace_s)
    if policy.validity_s == 0:
        raise ConfigError("grants.validity_s must be positive")
    for unit in Unit:
        table = grants.get(unit.value)
        if table is None:
            continue
        where = f"grants.{unit.value}"
        old = policy.limits[unit]
        try:
            policy.limits[unit] = UnitGrantLimits(
                _int(table, "min", where, old.min_units),
                _int(table, "default", where, old.default_units),
                _int(table, "max", where, old.max_units),
            )
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
