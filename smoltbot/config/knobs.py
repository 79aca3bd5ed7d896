"""
The one table of configuration variables: every environment variable an operator sets, the
`Config` field it fills, how its value is parsed and checked, its default, and one line on what
it is for.

`load_config` reads the table; `tests/test_knobs.py` checks `docs/CONFIGURATION.md` against it,
so a variable cannot be added, renamed or given a new default without the reference following.
Parsers are pure: they return the value or raise `ValueError` with a message that never repeats
the raw value (it may be secret).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString

from smoltbot import __version__
from smoltbot.store.dsn import is_postgres_dsn

ROLES = ("gateway", "scheduler", "all")
LOG_LEVELS = ("debug", "info", "warn", "error")

DEFAULT_HEARTBEAT_URL = "https://api.mnemom.ai/v1/deployments/heartbeat"
DEFAULT_UPSTREAMS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


# --- Parsers ------------------------------------------------------------------------------------


def _text(raw: str) -> str:
    return raw


def _seconds(minimum: float, allow_zero: bool = False) -> Callable[[str], float]:
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


def _postgres_dsn(raw: str) -> str:
    if not is_postgres_dsn(raw):
        raise ValueError("must be a PostgreSQL DSN (postgresql://user:password@host:5432/dbname)")
    return raw


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


def _pem(raw: str) -> str:
    # A PEM key set on one line (Docker .env, Kubernetes secrets) arrives with literal "\n"s.
    return raw.replace("\\n", "\n")


def _endpoint(raw: str) -> str:
    """
    A Twisted server endpoint description, parsed here (without a reactor: parsing binds nothing)
    so that a bad one is reported with the other configuration problems, before anything starts.
    """
    try:
        serverFromString(None, raw)
    except IndexError:
        # systemd: endpoints index the sockets systemd passed (LISTEN_FDS); there are none.
        raise ValueError("names a socket systemd did not pass (systemd: endpoints need socket activation)") from None
    except Exception as e:
        raise ValueError(
            f"must be a server endpoint such as tcp:8787:interface=0.0.0.0, unix:/run/smoltbot/http.sock "
            f"or systemd:domain=INET:index=0 ({e})"
        ) from None
    return raw


# --- The table ----------------------------------------------------------------------------------


class Required:
    """The default of a variable that must be set (while `applies(values)` holds for the values read)."""

    def __init__(self, applies: Callable[[Mapping[str, object]], bool] = lambda values: True) -> None:
        self.applies = applies


Derive = Callable[[Mapping[str, object], Mapping[str, str]], object]
"""A default computed from the values read before it (by target) and the environment."""

_UNSET = object()


@dataclass(frozen=True)
class Knob:
    """One environment variable: the field it fills, how it is parsed, its default and what it is for."""

    variable: str
    target: str
    """`section.field` (`section.field.key` for a mapping), or a top-level `Config` field."""
    parse: Callable[[str], object]
    default: object
    """The value when unset; a `Required`; or a `Derive` function (then `shown` says what it gives)."""
    doc: str
    option: str | None = None
    """The `twistd smoltbot` option that overrides the variable."""
    shown: str | None = None
    """The default as docs/CONFIGURATION.md writes it, when it is not the value itself."""
    empty: object = _UNSET
    """The value of the empty string, for the variable where it is not "unset"."""
    alias_for: str | None = None
    """The variable this one stands in for (read by `load_config` itself, not into a field)."""

    @property
    def required(self) -> bool:
        """Whether the variable is one of the required ones (DESIGN §1.1)."""
        return isinstance(self.default, Required)

    @property
    def empty_is_a_value(self) -> bool:
        """Whether the empty string sets `empty` rather than counting as unset."""
        return self.empty is not _UNSET

    @property
    def derived(self) -> bool:
        """Whether the default is computed (`Derive`) rather than a value."""
        return callable(self.default) and not self.required

    @property
    def default_text(self) -> str:
        """How docs/CONFIGURATION.md begins the default: `8787`, `true`, unset, ..."""
        if self.required:
            return "required"
        if self.shown is not None:
            return self.shown
        value = self.default
        if value is None:
            return "unset"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, float) and value.is_integer():
            return f"`{int(value)}`"
        return f"`{value}`"


def _state_dir(values: Mapping[str, object], env: Mapping[str, str]) -> str:
    return env.get("STATE_DIRECTORY", "").split(":")[0] or "/var/lib/smoltbot"


def _spool_dir(values: Mapping[str, object], env: Mapping[str, str]) -> str:
    return os.path.join(str(values["state_dir"]), "spool")


def _deployment_id(values: Mapping[str, object], env: Mapping[str, str]) -> str:
    return f"selfhosted-{env.get('HOSTNAME') or socket.gethostname() or 'local'}"


def _analysis_needs_key(values: Mapping[str, object]) -> bool:
    return bool(values["aip_enabled"]) and values["integrity.analyze_url"] is None


KNOBS: tuple[Knob, ...] = (
    # Required (DESIGN §1.1); reported together, in this order, when missing.
    Knob("DATABASE_URL", "database.url", _postgres_dsn, Required(), "PostgreSQL DSN"),
    Knob(
        "ANTHROPIC_API_KEY", "integrity.anthropic_api_key", _text, Required(_analysis_needs_key),
        "the gateway's own key for integrity analysis",
    ),
    Knob(
        "SUPABASE_URL", "database.url", _text, None, "stands in for DATABASE_URL when it holds a postgres:// DSN",
        alias_for="DATABASE_URL",
    ),
    # Core.
    Knob("SMOLTBOT_ROLE", "role", _choice(ROLES), "all", "gateway, scheduler or all", option="role"),
    Knob("GATEWAY_VERSION", "gateway_version", _text, __version__, "version reported", shown="the package version"),
    Knob("AIP_ENABLED", "aip_enabled", _boolean, True, "integrity analysis on or off"),
    Knob(
        "SMOLTBOT_STATE_DIR", "state_dir", _text, _state_dir, "folder for durable local state",
        shown="`$STATE_DIRECTORY` (systemd), else `/var/lib/smoltbot`",
    ),
    Knob("PORT", "http.port", _bounded_int(1, 65535), 8787, "TCP port of the HTTP listener", option="port"),
    Knob("HOST", "http.host", _text, "0.0.0.0", "address of the HTTP listener", option="host"),
    Knob(
        "LISTEN", "http.listen", _endpoint, None, "endpoint description of the HTTP listener (wins over PORT and HOST)",
        option="listen", shown="`tcp:<PORT>:interface=<HOST>:backlog=1024`",
    ),
    Knob("LOG_LEVEL", "logging.level", _choice(LOG_LEVELS), "info", "debug, info, warn or error"),
    Knob("REDIS_URL", "kv.redis_url", _redis_url, None, "Redis for the shared cache; unset: in-memory"),
    *(
        Knob(f"{provider.upper()}_UPSTREAM_URL", f"proxy.upstreams.{provider}", _http_url, url, f"where /{provider}/* traffic goes")
        for provider, url in DEFAULT_UPSTREAMS.items()
    ),
    Knob("MNEMOM_LICENSE_JWT", "license.jwt", _text, None, "enterprise license (informational)"),
    Knob("MNEMOM_LICENSE_PUBLIC_KEY", "license.public_key", _pem, None, "PEM key verifying the license"),
    Knob("MNEMOM_LICENSE_SECRET", "license.secret", _text, None, "HS256 secret verifying the license"),
    Knob(
        "HEARTBEAT_URL", "heartbeat.url", _http_url, DEFAULT_HEARTBEAT_URL, "where the heartbeat goes; empty disables it",
        empty=None,
    ),
    Knob(
        "DEPLOYMENT_ID", "heartbeat.deployment_id", _text, _deployment_id, "the deployment's name in the heartbeat",
        shown="`selfhosted-<hostname>`",
    ),
    Knob("MNEMOM_ANALYZE_URL", "integrity.analyze_url", _http_url, None, "hybrid mode: remote analyze endpoint"),
    Knob("MNEMOM_API_KEY", "integrity.mnemom_api_key", _text, None, "credential for MNEMOM_ANALYZE_URL"),
    # Health, dependencies, license, heartbeat.
    Knob("HEALTH_PROBE_INTERVAL_SECONDS", "health.probe_interval", _seconds(0.1), 5.0, "time between readiness probes"),
    Knob("HEALTH_PROBE_TIMEOUT_SECONDS", "health.probe_timeout", _seconds(0.1), 5.0, "timeout of each probe"),
    Knob("REDIS_TIMEOUT_SECONDS", "kv.op_timeout", _seconds(0.01), 0.5, "timeout of a KV operation"),
    Knob("REDIS_CONNECT_TIMEOUT_SECONDS", "kv.connect_timeout", _seconds(0.1), 5.0, "timeout of a Redis connection attempt"),
    Knob("DATABASE_CONNECT_TIMEOUT_SECONDS", "database.connect_timeout", _seconds(0.1), 5.0, "timeout of a PostgreSQL connection attempt"),
    Knob("DATABASE_QUERY_TIMEOUT_SECONDS", "database.query_timeout", _seconds(0.1), 10.0, "timeout of a PostgreSQL statement"),
    Knob("DATABASE_POOL_SIZE", "database.pool_size", _bounded_int(1, 100), 4, "PostgreSQL connections per process"),
    Knob("LICENSE_LEEWAY_SECONDS", "license.leeway", _seconds(0, allow_zero=True), 60.0, "clock-skew allowance on the license expiry"),
    Knob("LICENSE_CHECK_INTERVAL_SECONDS", "license.check_interval", _seconds(1), 60.0, "time between license judgements"),
    Knob("HEARTBEAT_INTERVAL_SECONDS", "heartbeat.interval", _seconds(1), 60.0, "time between heartbeats"),
    Knob("HEARTBEAT_TIMEOUT_SECONDS", "heartbeat.timeout", _seconds(0.1), 10.0, "timeout of a heartbeat"),
    # Shutdown.
    Knob("SHUTDOWN_DELAY_SECONDS", "shutdown.delay", _seconds(0, allow_zero=True), 0.0, "draining before the listener closes"),
    Knob("SHUTDOWN_DRAIN_TIMEOUT_SECONDS", "shutdown.drain_timeout", _seconds(0, allow_zero=True), 20.0, "time left to requests in flight"),
    # Provider proxy.
    Knob("MAX_REQUEST_BODY_BYTES", "http.max_request_body_bytes", _bounded_int(1024, 1 << 34), 32 * 1024 * 1024, "largest request body"),
    Knob("MAX_CONCURRENT_REQUESTS", "proxy.max_concurrent_requests", _bounded_int(1, 1_000_000), 4096, "proxied requests at once"),
    Knob("UPSTREAM_CONNECT_TIMEOUT_SECONDS", "proxy.connect_timeout", _seconds(0.01), 10.0, "timeout of a connection to a provider"),
    Knob("UPSTREAM_TTFB_TIMEOUT_SECONDS", "proxy.ttfb_timeout", _seconds(0.01), 300.0, "longest wait for response headers"),
    Knob("UPSTREAM_IDLE_TIMEOUT_SECONDS", "proxy.idle_timeout", _seconds(0.01), 120.0, "longest silence within a response"),
    Knob(
        "UPSTREAM_MAX_CONNECTIONS_PER_HOST", "proxy.max_connections_per_host", _bounded_int(1, 1_000_000), 1024,
        "idle connections kept per provider",
    ),
    Knob("UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS", "proxy.keepalive_timeout", _seconds(0.1), 60.0, "how long an idle connection is kept"),
    # Request records and agent rows.
    Knob("RECORDER_ENABLED", "recorder.enabled", _boolean, True, "request records and agent rows on or off"),
    Knob(
        "RECORDER_SPOOL_DIR", "recorder.spool_dir", _text, _spool_dir, "folder of the record spool",
        shown="`<SMOLTBOT_STATE_DIR>/spool`",
    ),
    Knob("RECORDER_QUEUE_SIZE", "recorder.queue_size", _bounded_int(1, 10_000_000), 10_000, "records held in memory at most"),
    Knob("RECORDER_BATCH_SIZE", "recorder.batch_size", _bounded_int(1, 10_000), 500, "records per INSERT"),
    Knob("RECORDER_FLUSH_INTERVAL_SECONDS", "recorder.flush_interval", _seconds(0.01), 1.0, "longest a record waits in memory"),
    Knob("RECORDER_WRITE_TIMEOUT_SECONDS", "recorder.write_timeout", _seconds(0.1), 5.0, "timeout of an INSERT"),
    Knob(
        "RECORDER_STOP_TIMEOUT_SECONDS", "recorder.stop_timeout", _seconds(0, allow_zero=True), 5.0,
        "time left to queued records at shutdown",
    ),
    Knob(
        "RECORDER_SPOOL_SEGMENT_BYTES", "recorder.spool_segment_bytes", _bounded_int(64 * 1024, 1 << 32), 16 * 1024 * 1024,
        "size of one spool file",
    ),
    Knob("AGENT_LAST_SEEN_INTERVAL_SECONDS", "recorder.agent_last_seen_interval", _seconds(1), 60.0, "how often last_seen is updated"),
    Knob("AGENT_PENDING_MAX", "recorder.agent_pending_max", _bounded_int(1, 10_000_000), 10_000, "agent writes waiting at most"),
)
"""Every variable an operator sets, in the order problems are reported."""


PLATFORM_VARIABLES: Mapping[str, str] = {
    "STATE_DIRECTORY": "set by systemd (StateDirectory=): the default of SMOLTBOT_STATE_DIR",
    "HOSTNAME": "the default of DEPLOYMENT_ID (else the host name)",
    "NOTIFY_SOCKET": "set by systemd for Type=notify units: where READY=1 and STOPPING=1 go",
    "LISTEN_FDS": "set by systemd socket activation (with LISTEN_PID and LISTEN_FDNAMES): the sockets systemd: endpoints adopt",
}
"""
The variables the daemon reads that the platform sets, not the operator: not knobs, but listed
so that every variable read is written down somewhere (docs/CONFIGURATION.md names them too).
"""
