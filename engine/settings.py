"""Configuration: one frozen dataclass, built from command-line flags over environment
variables over defaults. Building it has no side effects."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.domain.sourcing import COST_FIELDS, MAX_SHIPMENTS, Constraints, CostModel

# where a write must be before it is answered (docs/operations.md, "Durability")
DURABILITY = ("local", "fsync", "replica")

_COST, _CONSTRAINTS = CostModel(), Constraints()  # the defaults are theirs


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = field(default="127.0.0.1:50051", metadata={"help": "gRPC host:port"})
    redis_url: str = field(
        default="",
        metadata={
            "env": "REDIS_URL",
            "help": "redis:// or rediss:// URL of one Redis, or of any node of a Redis "
            "Cluster (found out by asking it); empty starts the embedded server",
        },
    )
    state_dir: Path = field(
        default=Path("state"), metadata={"help": "where the embedded server keeps its data"}
    )
    metrics_port: int = field(
        default=9464, metadata={"help": "Prometheus metrics on 127.0.0.1:<port>; 0 = off"}
    )
    demo: bool = field(default=False, metadata={"help": "load demo stores and stock if empty"})
    hold_ttl_seconds: float = field(default=900.0, metadata={"help": "default hold lifetime"})
    retention_hours: float = field(
        default=72.0, metadata={"help": "how long settled reservations are remembered"}
    )
    event_window_hours: float = field(
        default=72.0, metadata={"help": "how long stock event ids are remembered (dedupe)"}
    )
    max_clock_skew_seconds: float = field(
        default=300.0,
        metadata={
            "help": "a source's clock this far off is flagged; events this far ahead are rejected"
        },
    )
    dead_letter_stream: str = field(
        default="omnistock:events:dead",
        metadata={"help": "the ingest adapters' dead letters, in the server's store (operators)"},
    )
    sequence_gap_grace_seconds: float = field(
        default=60.0,
        metadata={"help": "a gap in a numbered source's events is reported once open this long"},
    )
    count_missing: str = field(
        default="zero",
        metadata={"help": "ReconcileCount: rows a full count does not list: zero|keep"},
    )
    stock_buckets: int = field(
        default=256, metadata={"help": "hash buckets per location (fixed for a data set)"}
    )
    sweep_interval_ms: int = field(default=200, metadata={"help": "expiry sweeper period"})
    saga_timeout_seconds: float = field(
        default=10.0, metadata={"help": "a cross-location step older than this is recovered"}
    )
    max_concurrent_calls: int = field(
        default=4000,
        metadata={"help": "calls under way at once; more are answered RESOURCE_EXHAUSTED"},
    )
    redis_timeout_seconds: float = field(
        default=2.0, metadata={"help": "socket timeout for each Redis exchange"}
    )
    redis_max_connections: int = field(
        default=128, metadata={"help": "connections to Redis per server process"}
    )
    redis_probe_interval_seconds: float = field(
        default=0.25, metadata={"help": "how often Redis is pinged for health and the circuit"}
    )
    redis_probe_timeout_seconds: float = field(
        default=0.5, metadata={"help": "a health ping not answered within this has failed"}
    )
    redis_probe_failures: int = field(
        default=2,
        metadata={
            "help": "failed health pings in a row that mark Redis down: health NOT_SERVING, "
            "calls UNAVAILABLE at once until a ping succeeds"
        },
    )
    appendfsync: str = field(
        default="everysec", metadata={"help": "embedded server AOF fsync: always|everysec"}
    )
    store_port: int = field(
        default=0,
        metadata={
            "help": "the embedded server's port (0: the one it last ran on in --state-dir, "
            "else a free one), so that its URL outlives a restart"
        },
    )
    count_lines_held: int = field(
        default=1_000_000,
        metadata={
            "help": "ReconcileCount: lines all counts being received may hold in memory at "
            "once (a count past it is refused RESOURCE_EXHAUSTED)"
        },
    )
    count_idle_seconds: float = field(
        default=30.0,
        metadata={"help": "ReconcileCount: a count silent for longer is cut"},
    )
    plan_workers: int = field(
        default=1,
        metadata={
            "help": "processes that plan Allocate orders off the event loop (0: plan inline)"
        },
    )
    auth_file: Path | None = field(
        default=None,
        metadata={
            "help": "TOML file of principals (docs/security.md); none: the server is open "
            "and listens on loopback only. Read again on SIGHUP or when it changes"
        },
    )
    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate chain: serve gRPC over TLS"}
    )
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: Path | None = field(
        default=None,
        metadata={"help": "PEM CA bundle: require client certificates it signed (mutual TLS)"},
    )
    insecure: bool = field(
        default=False,
        metadata={"help": "allow listening beyond loopback without --auth-file and TLS"},
    )
    durability: str = field(
        default="local",
        metadata={
            "help": "local: a write is answered once the primary has it (and its AOF, as "
            "--appendfsync says); fsync: only once the primary's AOF has it on disk; replica: "
            "only once --durability-replicas replicas have it too; else UNAVAILABLE (on a "
            "cluster: each node's own replicas)"
        },
    )
    durability_replicas: int = field(
        default=1,
        metadata={"help": "with --durability replica: replicas that must have a write"},
    )
    durability_timeout_ms: int = field(
        default=1000,
        metadata={"help": "with --durability other than local: how long a write waits"},
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes, all on the --listen port (each its own event loop; "
            "worker i serves metrics on --metrics-port + i)"
        },
    )
    rate_limit: float = field(
        default=0.0,
        metadata={"help": "calls per second per principal and process (0: no limit)"},
    )
    ingest_rate: float = field(
        default=20_000.0,
        metadata={
            "help": "stock events and count lines per second per principal and process; a "
            "principal sending faster is slowed down, not refused (0: no limit)"
        },
    )
    request_bytes_rate: int = field(
        default=8_000_000,
        metadata={
            "help": "bytes of unary requests per second per principal and process; a "
            "principal sending more is slowed down (a request of 64 KiB or less never "
            "waits; 0: no limit)"
        },
    )
    max_streams_per_principal: int = field(
        default=100,
        metadata={"help": "watch, event and count streams one principal may have open"},
    )
    storefront_max_ttl_seconds: float = field(
        default=1800.0, metadata={"help": "the longest hold a storefront principal may make"}
    )
    storefront_max_held_units: int = field(
        default=1000,
        metadata={"help": "units a storefront principal may hold at once, over all its holds"},
    )
    read_cache_rows: int = field(
        default=200_000,
        metadata={
            "help": "stock rows each process keeps for GetAvailability and FindNearby, kept "
            "fresh by the rows' change messages, and listed rows whose levels it keeps "
            "encoded for GetAvailability's answers (0: off, every read goes to Redis)"
        },
    )
    read_cache_max_lag_ms: int = field(
        default=200,
        metadata={
            "help": "a cached read reflects every write answered more than this before it; "
            "a location whose feed cannot vouch for that is read from Redis"
        },
    )
    no_band_alerts: bool = field(
        default=False,
        metadata={
            "help": "never find stock band crossings for the alerts stream in this process "
            "(one process of a deployment finds them: turn it off on each to have none)"
        },
    )
    network_view_rows: int = field(
        default=2_000_000,
        metadata={
            "help": "figures (a location's row, for a network and channel) each process keeps "
            "for GetNetworkAvailability, dropped when their row changes (0: off, every "
            "listing reads its rows from Redis); as fresh as --read-cache-max-lag-ms says"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    # Allocate's defaults (engine/domain/sourcing.py); each call may set its own.
    shipment_cost: float = field(
        default=_COST.shipment_cost, metadata={"help": "Allocate: cost of a shipment"}
    )
    cost_per_km: float = field(
        default=_COST.cost_per_km,
        metadata={"help": "Allocate: cost per km from location to destination"},
    )
    priority_cost: float = field(
        default=_COST.priority_cost,
        metadata={"help": "Allocate: cost per step of priority below the highest"},
    )
    buffer_units: int = field(
        default=_COST.buffer_units,
        metadata={"help": "Allocate: a store's last units kept for walk-in shoppers"},
    )
    buffer_penalty: float = field(
        default=_COST.buffer_penalty,
        metadata={"help": "Allocate: cost of each unit taken below that buffer"},
    )
    max_shipments: int = field(
        default=_CONSTRAINTS.max_shipments,
        metadata={"help": "Allocate: shipments per order when a call sets none"},
    )

    def cost_model(self) -> CostModel:
        """Allocate's cost model for a call that sets none of its own."""
        return CostModel(**{name: getattr(self, name) for name in COST_FIELDS})

    @property
    def retention_ms(self) -> int:
        return int(self.retention_hours * 3_600_000)

    @property
    def event_window_ms(self) -> int:
        return int(self.event_window_hours * 3_600_000)

    @property
    def max_clock_skew_ms(self) -> int:
        return int(self.max_clock_skew_seconds * 1000)

    @property
    def sequence_gap_grace_ms(self) -> int:
        return int(self.sequence_gap_grace_seconds * 1000)


def as_environment(settings: Settings, **changes: object) -> dict[str, str]:
    """The settings, with `changes`, as the environment variables that give them back."""
    values = {f.name: getattr(settings, f.name) for f in fields(Settings)} | changes
    out = {}
    for name, value in values.items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = "" if value is None else str(value)
        out[env_name(name)] = text
    return out


def env_name(name: str) -> str:
    for f in fields(Settings):
        if f.name == name:
            return str(f.metadata.get("env", f"OMNISTOCK_{name.upper()}"))
    raise KeyError(name)


def _convert(kind: object, raw: str) -> object:
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    if kind in (Path, "Path"):
        return Path(raw)
    if kind == "Path | None":
        return Path(raw) if raw else None
    return raw


def from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment variables, which win over the defaults."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="server.py", description="omnistock gRPC server", allow_abbrev=False
    )
    values: dict[str, object] = {}
    for f in fields(Settings):
        var = env_name(f.name)
        if var in env:
            values[f.name] = _convert(f.type, env[var])
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (env {var}; default {f.default})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    args = parser.parse_args(argv)
    for f in fields(Settings):
        raw = getattr(args, f.name)
        if raw is not None:
            values[f.name] = raw if isinstance(raw, bool) else _convert(f.type, raw)
    settings = Settings(**values)  # type: ignore[arg-type]
    check(settings, parser)
    return settings


def check(settings: Settings, parser: argparse.ArgumentParser) -> None:
    if settings.appendfsync not in ("always", "everysec"):
        parser.error("--appendfsync must be always or everysec")
    if settings.count_missing not in ("zero", "keep"):
        parser.error("--count-missing must be zero or keep")
    if not 0 <= settings.store_port < 65536:
        parser.error("--store-port must be 0 to 65535")
    for name, least in (("stock_buckets", 1), ("plan_workers", 0), ("max_concurrent_calls", 1),
                        ("workers", 1), ("read_cache_rows", 0),
                        ("read_cache_max_lag_ms", 1), ("network_view_rows", 0)):  # fmt: skip
        if getattr(settings, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    _check_edge(settings, parser)
    if settings.hold_ttl_seconds <= 0:
        parser.error("--hold-ttl-seconds must be positive")
    _check_probe(settings, parser)
    for name in COST_FIELDS:
        if not getattr(settings, name) >= 0:
            parser.error(f"--{name.replace('_', '-')} must be a number >= 0")
    if not 1 <= settings.max_shipments <= MAX_SHIPMENTS:
        parser.error(f"--max-shipments must be 1 to {MAX_SHIPMENTS}")


def _check_probe(settings: Settings, parser: argparse.ArgumentParser) -> None:
    for name in ("redis_probe_interval_seconds", "redis_probe_timeout_seconds"):
        if not getattr(settings, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if settings.redis_probe_failures < 1:
        parser.error("--redis-probe-failures must be at least 1")


def _check_edge(settings: Settings, parser: argparse.ArgumentParser) -> None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if settings.rate_limit < 0 or settings.ingest_rate < 0 or settings.request_bytes_rate < 0:
        parser.error("--rate-limit, --ingest-rate and --request-bytes-rate must be >= 0")
    if settings.durability not in DURABILITY:
        parser.error(f"--durability must be one of {', '.join(DURABILITY)}")
    if settings.durability_replicas < 1 or settings.durability_timeout_ms < 1:
        parser.error("--durability-replicas and --durability-timeout-ms must be at least 1")
    if settings.max_streams_per_principal < 1:
        parser.error("--max-streams-per-principal must be >= 1")
    if settings.storefront_max_ttl_seconds <= 0 or settings.storefront_max_held_units < 1:
        parser.error("--storefront-max-ttl-seconds and --storefront-max-held-units must be > 0")
