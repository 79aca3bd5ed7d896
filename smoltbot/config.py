"""
Configuration: one pure function from the environment (plus twistd options) to a frozen `Config`.

Every variable of DESIGN §1.1 and every operational knob is read here and nowhere else; the
rest of the code receives a `Config`. Error messages name the variable and the problem and
never echo a value that may be secret.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from smoltbot import __version__

ROLES = ("gateway", "scheduler", "all")
LOG_LEVELS = ("debug", "info", "warn", "error")

DEFAULT_HEARTBEAT_URL = "https://api.mnemom.ai/v1/deployments/heartbeat"
DEFAULT_UPSTREAMS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


class ConfigError(Exception):
    """The environment holds a value the daemon cannot run with."""


class EnvValidationError(ConfigError):
    """Required environment variables are missing; the message lists every one of them."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        lines = "\n".join(f"  {name}" for name in self.missing)
        super().__init__(
            f"Missing required environment variables:\n{lines}\n\nSet them in your .env or deployment configuration."
        )


@dataclass(frozen=True)
class Config:
    """Everything the daemon and the CLI need to know, validated. Secret fields stay out of repr."""

    database_url: str = field(repr=False)
    anthropic_api_key: str | None = field(repr=False)
    redis_url: str | None = field(repr=False)
    port: int
    host: str
    role: str
    log_level: str
    gateway_version: str
    aip_enabled: bool
    upstreams: Mapping[str, str]
    license_jwt: str | None = field(repr=False)
    license_public_key: str | None = field(repr=False)
    license_secret: str | None = field(repr=False)
    heartbeat_url: str | None
    deployment_id: str
    analyze_url: str | None
    mnemom_api_key: str | None = field(repr=False)

    # Health, dependencies, license, heartbeat.
    probe_interval: float = 5.0
    probe_timeout: float = 5.0
    redis_op_timeout: float = 0.5
    redis_connect_timeout: float = 5.0
    database_connect_timeout: float = 5.0
    database_query_timeout: float = 10.0
    database_pool_size: int = 4
    license_leeway: float = 60.0
    license_check_interval: float = 60.0
    heartbeat_interval: float = 60.0
    heartbeat_timeout: float = 10.0

    # Shutdown.
    shutdown_delay: float = 0.0
    shutdown_drain_timeout: float = 20.0

    # Provider proxy.
    max_request_body_bytes: int = 32 * 1024 * 1024
    max_concurrent_requests: int = 4096
    upstream_connect_timeout: float = 10.0
    upstream_ttfb_timeout: float = 300.0
    upstream_idle_timeout: float = 120.0
    upstream_max_connections_per_host: int = 1024
    upstream_keepalive_timeout: float = 60.0

    # Where durable local state (the request-record spool) lives.
    state_dir: str = "/var/lib/smoltbot"

    # Request records and agent rows.
    recorder_enabled: bool = True
    recorder_spool_dir: str | None = None
    recorder_queue_size: int = 10_000
    recorder_batch_size: int = 500
    recorder_flush_interval: float = 1.0
    recorder_write_timeout: float = 5.0
    recorder_stop_timeout: float = 5.0
    recorder_spool_segment_bytes: int = 16 * 1024 * 1024
    agent_last_seen_interval: float = 60.0
    agent_pending_max: int = 10_000

    @property
    def spool_dir(self) -> str:
        """The request-record spool folder: RECORDER_SPOOL_DIR, else `spool` in the state folder."""
        return self.recorder_spool_dir or os.path.join(self.state_dir, "spool")

    @property
    def runs_gateway(self) -> bool:
        """Whether this process serves provider traffic."""
        return self.role in ("gateway", "all")

    @property
    def service_name(self) -> str:
        """The `service` field of every log line."""
        return "smoltbot-scheduler" if self.role == "scheduler" else "smoltbot-gateway"

    @property
    def kv_mode(self) -> str:
        """`redis` when REDIS_URL is set, else `memory`."""
        return "redis" if self.redis_url else "memory"


def _positive_float(name: str, minimum: float = 0.0, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if value < minimum or (value == 0 and not allow_zero):
            raise ValueError(f"must be {'at least' if allow_zero else 'greater than'} {minimum:g}")
        return value

    parse.__name__ = name
    return parse


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", raw):
            raise ValueError(f"must be a whole number between {low} and {high}")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// or rediss://")
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if not parts.hostname:
        raise ValueError("must name a host")
    return raw


_LIBPQ_KEYWORD = re.compile(r"^\s*(\w+)\s*=")


def is_postgres_dsn(raw: str) -> bool:
    """Whether `raw` is a PostgreSQL URL (postgres:// or postgresql://) or a libpq key=value DSN."""
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("postgres", "postgresql"):
            return False
        try:
            parts.port
        except ValueError:
            return False
        return bool(parts.hostname or "host=" in parts.query)
    return bool(_LIBPQ_KEYWORD.match(raw)) and all("=" in token for token in raw.split() if token.strip())


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return raw.rstrip("/")


# Operational knobs: environment variable -> (Config field, parser).
_KNOBS: dict[str, tuple[str, Callable[[str], object]]] = {
    "HEALTH_PROBE_INTERVAL_SECONDS": ("probe_interval", _positive_float("interval", 0.1)),
    "HEALTH_PROBE_TIMEOUT_SECONDS": ("probe_timeout", _positive_float("timeout", 0.1)),
    "REDIS_TIMEOUT_SECONDS": ("redis_op_timeout", _positive_float("timeout", 0.01)),
    "REDIS_CONNECT_TIMEOUT_SECONDS": ("redis_connect_timeout", _positive_float("timeout", 0.1)),
    "DATABASE_CONNECT_TIMEOUT_SECONDS": ("database_connect_timeout", _positive_float("timeout", 0.1)),
    "DATABASE_QUERY_TIMEOUT_SECONDS": ("database_query_timeout", _positive_float("timeout", 0.1)),
    "DATABASE_POOL_SIZE": ("database_pool_size", _bounded_int(1, 100)),
    "LICENSE_LEEWAY_SECONDS": ("license_leeway", _positive_float("leeway", 0, allow_zero=True)),
    "LICENSE_CHECK_INTERVAL_SECONDS": ("license_check_interval", _positive_float("interval", 1)),
    "HEARTBEAT_INTERVAL_SECONDS": ("heartbeat_interval", _positive_float("interval", 1)),
    "HEARTBEAT_TIMEOUT_SECONDS": ("heartbeat_timeout", _positive_float("timeout", 0.1)),
    "SHUTDOWN_DELAY_SECONDS": ("shutdown_delay", _positive_float("delay", 0, allow_zero=True)),
    "SHUTDOWN_DRAIN_TIMEOUT_SECONDS": ("shutdown_drain_timeout", _positive_float("timeout", 0, allow_zero=True)),
    "MAX_REQUEST_BODY_BYTES": ("max_request_body_bytes", _bounded_int(1024, 1 << 34)),
    "MAX_CONCURRENT_REQUESTS": ("max_concurrent_requests", _bounded_int(1, 1_000_000)),
    "UPSTREAM_CONNECT_TIMEOUT_SECONDS": ("upstream_connect_timeout", _positive_float("timeout", 0.01)),
    "UPSTREAM_TTFB_TIMEOUT_SECONDS": ("upstream_ttfb_timeout", _positive_float("timeout", 0.01)),
    "UPSTREAM_IDLE_TIMEOUT_SECONDS": ("upstream_idle_timeout", _positive_float("timeout", 0.01)),
    "UPSTREAM_MAX_CONNECTIONS_PER_HOST": ("upstream_max_connections_per_host", _bounded_int(1, 1_000_000)),
    "UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS": ("upstream_keepalive_timeout", _positive_float("timeout", 0.1)),
    "RECORDER_ENABLED": ("recorder_enabled", _boolean),
    "RECORDER_QUEUE_SIZE": ("recorder_queue_size", _bounded_int(1, 10_000_000)),
    "RECORDER_BATCH_SIZE": ("recorder_batch_size", _bounded_int(1, 10_000)),
    "RECORDER_FLUSH_INTERVAL_SECONDS": ("recorder_flush_interval", _positive_float("interval", 0.01)),
    "RECORDER_WRITE_TIMEOUT_SECONDS": ("recorder_write_timeout", _positive_float("timeout", 0.1)),
    "RECORDER_STOP_TIMEOUT_SECONDS": ("recorder_stop_timeout", _positive_float("timeout", 0, allow_zero=True)),
    "RECORDER_SPOOL_SEGMENT_BYTES": ("recorder_spool_segment_bytes", _bounded_int(64 * 1024, 1 << 32)),
    "AGENT_LAST_SEEN_INTERVAL_SECONDS": ("agent_last_seen_interval", _positive_float("interval", 1)),
    "AGENT_PENDING_MAX": ("agent_pending_max", _bounded_int(1, 10_000_000)),
}


def load_config(environ: Mapping[str, str], overrides: Mapping[str, object] | None = None) -> Config:
    """
    Build the configuration from `environ` (usually `os.environ`) and twistd option overrides.

    `overrides` may hold `role`, `port` and `host` as given on the command line; they win over
    the environment. Raises `EnvValidationError` when required variables are missing, else
    `ConfigError` listing every invalid value.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = {k: v for k, v in environ.items() if v != ""}
    problems: list[str] = []

    def read(name: str, parse: Callable[[str], object], default: object, override: object = None) -> object:
        raw = override if override is not None else env.get(name)
        if raw is None:
            return default
        try:
            return parse(str(raw))
        except ValueError as e:
            problems.append(f"{name}: {e}")
            return default

    role = read("SMOLTBOT_ROLE", _choice(ROLES), "all", overrides.get("role"))
    aip_enabled = read("AIP_ENABLED", _boolean, True)
    analyze_url = read("MNEMOM_ANALYZE_URL", _http_url, None)

    database_url = env.get("DATABASE_URL")
    if database_url is None and env.get("SUPABASE_URL", "").startswith(("postgres://", "postgresql://")):
        database_url = env["SUPABASE_URL"]
    missing = []
    if database_url is None:
        missing.append("DATABASE_URL")
    if aip_enabled and analyze_url is None and "ANTHROPIC_API_KEY" not in env:
        missing.append("ANTHROPIC_API_KEY")
    if missing:
        raise EnvValidationError(missing)
    if not is_postgres_dsn(database_url):
        problems.append("DATABASE_URL: must be a PostgreSQL DSN (postgresql://user:password@host:5432/dbname)")

    heartbeat_url: str | None
    if environ.get("HEARTBEAT_URL") == "":
        heartbeat_url = None  # the empty string disables the heartbeat
    else:
        heartbeat_url = read("HEARTBEAT_URL", _http_url, DEFAULT_HEARTBEAT_URL)

    knobs = {fieldname: read(name, parse, Config.__dataclass_fields__[fieldname].default) for name, (fieldname, parse) in _KNOBS.items()}
    upstreams = {
        provider: read(f"{provider.upper()}_UPSTREAM_URL", _http_url, default) for provider, default in DEFAULT_UPSTREAMS.items()
    }
    config = dict(
        database_url=database_url,
        anthropic_api_key=env.get("ANTHROPIC_API_KEY"),
        redis_url=read("REDIS_URL", _redis_url, None),
        port=read("PORT", _bounded_int(1, 65535), 8787, overrides.get("port")),
        host=overrides.get("host") or env.get("HOST", "0.0.0.0"),
        role=role,
        log_level=read("LOG_LEVEL", _choice(LOG_LEVELS), "info"),
        gateway_version=env.get("GATEWAY_VERSION", __version__),
        aip_enabled=aip_enabled,
        upstreams=upstreams,
        license_jwt=env.get("MNEMOM_LICENSE_JWT"),
        # A PEM key set on one line (Docker .env, Kubernetes secrets) arrives with literal "\n"s.
        license_public_key=env.get("MNEMOM_LICENSE_PUBLIC_KEY", "").replace("\\n", "\n") or None,
        license_secret=env.get("MNEMOM_LICENSE_SECRET"),
        heartbeat_url=heartbeat_url,
        deployment_id=env.get("DEPLOYMENT_ID") or f"selfhosted-{env.get('HOSTNAME') or socket.gethostname() or 'local'}",
        analyze_url=analyze_url,
        mnemom_api_key=env.get("MNEMOM_API_KEY"),
        state_dir=env.get("SMOLTBOT_STATE_DIR") or env.get("STATE_DIRECTORY", "").split(":")[0] or "/var/lib/smoltbot",
        recorder_spool_dir=env.get("RECORDER_SPOOL_DIR"),
        **knobs,
    )
    if problems:
        raise ConfigError("Invalid environment variables:\n" + "\n".join(f"  {p}" for p in problems))
    return Config(**config)


def config_from_environment(overrides: Mapping[str, object] | None = None) -> Config:
    """`load_config` over this process's environment."""
    return load_config(os.environ, overrides)
