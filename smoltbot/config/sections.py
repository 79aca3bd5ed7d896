"""
The validated configuration, one frozen section per concern.

Each part of the daemon takes the section it needs whole (`config.database`, `config.recorder`,
...), so a feature's settings travel together and a new feature adds a section rather than
more fields to one flat class. Fields have no defaults here: `smoltbot.config.knobs` holds the
one table of variables, defaults and parsers, and `load_config` fills every field from it.
Secret fields stay out of `repr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from twisted.internet.endpoints import quoteStringArgument


@dataclass(frozen=True)
class HttpSection:
    """The HTTP listener and what it accepts."""

    listen: str | None
    """The endpoint description given by LISTEN or `--listen`, or None to listen on `host` and `port`."""
    port: int
    host: str
    max_request_body_bytes: int

    @property
    def endpoint(self) -> str:
        """
        The server endpoint description to listen on: `listen` when given, else TCP on `host` and
        `port` (a `:` in an IPv6 address is escaped, as endpoint strings separate arguments with it).
        """
        return self.listen or f"tcp:{self.port}:interface={quoteStringArgument(self.host)}:backlog=1024"

    @property
    def listen_variable(self) -> str:
        """The variable an operator changes to move the listener, for error messages."""
        return "LISTEN" if self.listen else "PORT"


@dataclass(frozen=True)
class ProxySection:
    """The provider proxy: where each provider's traffic goes, limits and timeouts."""

    upstreams: Mapping[str, str]
    max_concurrent_requests: int
    connect_timeout: float
    ttfb_timeout: float
    idle_timeout: float
    max_connections_per_host: int
    keepalive_timeout: float


@dataclass(frozen=True)
class DatabaseSection:
    """The PostgreSQL pool."""

    url: str = field(repr=False)
    pool_size: int
    connect_timeout: float
    query_timeout: float


@dataclass(frozen=True)
class KVSection:
    """The shared key-value store: Redis, or an in-memory store per process when no URL is set."""

    redis_url: str | None = field(repr=False)
    op_timeout: float
    connect_timeout: float

    @property
    def mode(self) -> str:
        """`redis` when REDIS_URL is set, else `memory`."""
        return "redis" if self.redis_url else "memory"


@dataclass(frozen=True)
class RecorderSection:
    """Request records (the recorder and its spool) and agent rows."""

    enabled: bool
    spool_dir: str
    queue_size: int
    batch_size: int
    flush_interval: float
    write_timeout: float
    stop_timeout: float
    spool_segment_bytes: int
    agent_last_seen_interval: float
    agent_pending_max: int


@dataclass(frozen=True)
class HealthSection:
    """The readiness probes."""

    probe_interval: float
    probe_timeout: float


@dataclass(frozen=True)
class LicenseSection:
    """The enterprise license and how it is judged."""

    jwt: str | None = field(repr=False)
    public_key: str | None = field(repr=False)
    secret: str | None = field(repr=False)
    leeway: float
    check_interval: float


@dataclass(frozen=True)
class HeartbeatSection:
    """The deployment heartbeat; `url` is None when it is disabled."""

    url: str | None
    deployment_id: str
    interval: float
    timeout: float


@dataclass(frozen=True)
class ShutdownSection:
    """The draining shutdown."""

    delay: float
    drain_timeout: float


@dataclass(frozen=True)
class LoggingSection:
    """The log filter."""

    level: str


@dataclass(frozen=True)
class IntegritySection:
    """Credentials and endpoints of integrity analysis (whether it runs is `Config.aip_enabled`)."""

    anthropic_api_key: str | None = field(repr=False)
    analyze_url: str | None
    mnemom_api_key: str | None = field(repr=False)


@dataclass(frozen=True)
class Config:
    """Everything the daemon and the CLI need to know, validated: the process's identity, then one section per concern."""

    role: str
    gateway_version: str
    aip_enabled: bool
    state_dir: str
    http: HttpSection
    proxy: ProxySection
    database: DatabaseSection
    kv: KVSection
    recorder: RecorderSection
    health: HealthSection
    license: LicenseSection
    heartbeat: HeartbeatSection
    shutdown: ShutdownSection
    logging: LoggingSection
    integrity: IntegritySection

    @property
    def runs_gateway(self) -> bool:
        """Whether this process serves provider traffic."""
        return self.role in ("gateway", "all")

    @property
    def service_name(self) -> str:
        """The `service` field of every log line."""
        return "smoltbot-scheduler" if self.role == "scheduler" else "smoltbot-gateway"


SECTIONS: Mapping[str, type] = {
    "http": HttpSection,
    "proxy": ProxySection,
    "database": DatabaseSection,
    "kv": KVSection,
    "recorder": RecorderSection,
    "health": HealthSection,
    "license": LicenseSection,
    "heartbeat": HeartbeatSection,
    "shutdown": ShutdownSection,
    "logging": LoggingSection,
    "integrity": IntegritySection,
}
"""Each section of `Config` by its field name."""
