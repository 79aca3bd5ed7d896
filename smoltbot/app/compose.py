"""
Composition: which parts one smoltbot process has, built from a `Config`.

`build` calls one builder per feature, in start order: `build_store` (PostgreSQL pool, KV),
`build_records` (agent registry, recorder and its spool), `build_health` (readiness state and
probes, license, heartbeat), `build_http` (ops API, provider proxy, site, listening endpoint).
Each builder decides from the role and its section whether the feature runs (once, there) and
returns the services it adds, plus what it plugs into others: readiness checks, and the request
policies and exchange sinks the proxy runs. Turning a feature off means its builder returns None.

Running the parts (start order, listener, drain, signals) is `smoltbot.app.lifecycle`'s job;
tests swap a part through `replace=` (one of `SEAMS`) rather than by subclassing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Mapping, TypeVar

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import ILogObserver
from twisted.web.resource import IResource

from smoltbot.app.lifecycle import GatewayService
from smoltbot.config import Config
from smoltbot.health.heartbeat import HeartbeatService
from smoltbot.health.license import LicenseMonitor
from smoltbot.health.probes import HealthState, ProbeService
from smoltbot.http.ops import OpsApi
from smoltbot.http.root import build_root
from smoltbot.http.site import GatewaySite
from smoltbot.metrics import Metrics
from smoltbot.proxy import ProviderProxy
from smoltbot.records.agents import AgentRegistry
from smoltbot.records.row import new_instance_id
from smoltbot.records.sink import RequestRecording
from smoltbot.records.spool import Spool
from smoltbot.records.writer import Recorder, WorkerThread
from smoltbot.store.kv import KVStore, make_kv
from smoltbot.store.pool import Database

SEAMS = ("spool_worker", "provider_resources", "endpoint")
"""
The parts a caller may supply instead of the built ones (`replace=`): the thread the recorder's
spool I/O runs on, the resources mounted per provider, and the endpoint the site listens on.
"""

T = TypeVar("T")
Check = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Deps:
    """What every builder receives: the configuration, the reactor, the metric registry, the replacements."""

    config: Config
    reactor: Any
    metrics: Metrics
    replace: Mapping[str, Any] = field(default_factory=dict)

    def part(self, name: str, build: Callable[[], T]) -> T:
        """The caller's replacement for the part `name` if it gave one, else `build()`."""
        return self.replace[name] if name in self.replace else build()


@dataclass(frozen=True, kw_only=True)
class Feature:
    """What one feature adds to the process besides its named parts."""

    services: tuple[IService, ...] = ()
    """Services to run, in start order (stopped in reverse)."""
    checks: Mapping[str, Check] = field(default_factory=dict)
    """In-process readiness checks, reported by `/health/ready` under their names."""
    policies: tuple[Any, ...] = ()
    """Request policies the proxy runs before sending a request upstream."""
    sinks: tuple[Any, ...] = ()
    """Exchange sinks the proxy tells about every finished request."""


@dataclass(frozen=True, kw_only=True)
class Store(Feature):
    """The PostgreSQL pool and the KV store (Redis, or in memory)."""

    database: Database
    kv: KVStore


@dataclass(frozen=True, kw_only=True)
class Records(Feature):
    """Request records and agent rows; `instance_id` names this process in the records."""

    agents: AgentRegistry
    recorder: Recorder
    instance_id: str


@dataclass(frozen=True, kw_only=True)
class Health(Feature):
    """Readiness state and probes, the license monitor, and the heartbeat (None when disabled)."""

    state: HealthState
    license: LicenseMonitor
    probes: ProbeService
    heartbeat: HeartbeatService | None


@dataclass(frozen=True, kw_only=True)
class Http(Feature):
    """The ops API, the provider proxy (None for roles that serve no traffic), the site and its endpoint."""

    ops: OpsApi
    proxy: ProviderProxy | None
    site: GatewaySite
    endpoint: IStreamServerEndpoint


@dataclass(frozen=True)
class Parts:
    """Every part of one process, by feature in start order; `records` is None when it does not run."""

    metrics: Metrics
    store: Store
    records: Records | None
    health: Health
    http: Http

    @property
    def features(self) -> tuple[Feature, ...]:
        """The features that run, in start order."""
        return tuple(f for f in (self.store, self.records, self.health, self.http) if f is not None)

    @property
    def services(self) -> tuple[IService, ...]:
        """Every feature's services, in start order."""
        return tuple(service for feature in self.features for service in feature.services)


def build(config: Config, reactor: Any, *, replace: Mapping[str, Any] | None = None, metrics: Metrics | None = None) -> Parts:
    """Build the parts a process runs with `config`; `replace` supplies some of them instead (see `SEAMS`)."""
    unknown = set(replace or {}) - set(SEAMS)
    if unknown:
        raise ValueError(f"cannot replace {', '.join(sorted(unknown))}: the parts that can be are {', '.join(SEAMS)}")
    deps = Deps(config, reactor, metrics or Metrics(config.gateway_version), dict(replace or {}))
    store = build_store(deps)
    records = build_records(deps, store)
    plugged = [f for f in (store, records) if f is not None]
    health = build_health(deps, store, checks={name: check for f in plugged for name, check in f.checks.items()})
    http = build_http(
        deps,
        health,
        policies=tuple(p for f in plugged for p in f.policies),
        sinks=tuple(s for f in plugged for s in f.sinks),
    )
    return Parts(deps.metrics, store, records, health, http)


def build_store(deps: Deps) -> Store:
    """The PostgreSQL pool and the KV store, with the pool's gauges."""
    config, reactor, metrics = deps.config, deps.reactor, deps.metrics
    database = Database(
        config.database.url,
        reactor=reactor,
        pool_size=config.database.pool_size,
        connect_timeout=config.database.connect_timeout,
        query_timeout=config.database.query_timeout,
    )
    metrics.database_connections.set_function(lambda: database.connections_up)
    metrics.database_calls_waiting.set_function(lambda: database.waiting)
    kv = make_kv(
        config.kv.redis_url,
        reactor=reactor,
        metrics=metrics,
        op_timeout=config.kv.op_timeout,
        connect_timeout=config.kv.connect_timeout,
    )
    return Store(database=database, kv=kv, services=(database, kv))


def build_records(deps: Deps, store: Store) -> Records | None:
    """
    Request records and agent rows, for roles that serve traffic while RECORDER_ENABLED holds.
    They start after the database and so stop (and write what they hold) before it closes.
    """
    config, reactor, metrics = deps.config, deps.reactor, deps.metrics
    if not (config.runs_gateway and config.recorder.enabled):
        return None
    section = config.recorder
    agents = AgentRegistry(
        store.database,
        clock=reactor,
        metrics=metrics,
        flush_interval=section.flush_interval,
        touch_interval=section.agent_last_seen_interval,
        max_pending=section.agent_pending_max,
        write_timeout=section.write_timeout,
    )
    metrics.agent_sightings_pending.set_function(lambda: agents.pending)
    recorder = Recorder(
        store.database,
        Spool(section.spool_dir, segment_bytes=section.spool_segment_bytes),
        clock=reactor,
        metrics=metrics,
        worker=deps.part("spool_worker", lambda: WorkerThread(reactor)),
        queue_size=section.queue_size,
        batch_size=section.batch_size,
        flush_interval=section.flush_interval,
        write_timeout=section.write_timeout,
        stop_timeout=section.stop_timeout,
    )
    instance_id = new_instance_id()
    recording = RequestRecording(
        recorder=recorder,
        agents=agents,
        metrics=metrics,
        gateway_version=config.gateway_version,
        instance_id=instance_id,
    )
    return Records(
        agents=agents,
        recorder=recorder,
        instance_id=instance_id,
        services=(agents, recorder),
        checks={"recorder": recorder.health_check},
        sinks=(recording,),
    )


def build_health(deps: Deps, store: Store, checks: Mapping[str, Check]) -> Health:
    """Readiness (probes of the store and the license, plus the features' `checks`), the license monitor and the heartbeat."""
    config, reactor, metrics = deps.config, deps.reactor, deps.metrics
    state = HealthState()
    for name, check in checks.items():
        state.add_check(name, check)
    license = LicenseMonitor(
        config.license.jwt,
        clock=reactor,
        leeway=config.license.leeway,
        public_key=config.license.public_key,
        secret=config.license.secret,
        interval=config.license.check_interval,
    )

    def license_check() -> dict[str, Any]:
        judgement = license.current
        check: dict[str, Any] = {"ok": judgement.ok}
        if judgement.warning:
            check["warning"] = judgement.warning
        return check

    probes = ProbeService(
        state,
        clock=reactor,
        metrics=metrics,
        kv=store.kv,
        kv_mode=config.kv.mode,
        database=_DatabaseProbe(store.database),
        license_check=license_check,
        interval=config.health.probe_interval,
        timeout=config.health.probe_timeout,
    )
    heartbeat = None
    if config.heartbeat.url:
        heartbeat = HeartbeatService(
            config.heartbeat.url,
            license_jwt=config.license.jwt,
            deployment_id=config.heartbeat.deployment_id,
            version=config.gateway_version,
            interval=config.heartbeat.interval,
            timeout=config.heartbeat.timeout,
            reactor=reactor,
            http_client=_outbound_client(reactor),
            health_status=lambda: "healthy" if state.healthy else "degraded",
            metrics=metrics,
            started_at=reactor.seconds(),
        )
    services = (license, probes) if heartbeat is None else (license, probes, heartbeat)
    return Health(state=state, license=license, probes=probes, heartbeat=heartbeat, services=services)


def build_http(deps: Deps, health: Health, *, policies: tuple[Any, ...] = (), sinks: tuple[Any, ...] = ()) -> Http:
    """
    The HTTP surface: the ops API on every role, the provider proxy (with the features'
    `policies` and `sinks`) on roles that serve traffic, the site, and the endpoint it listens on.
    """
    config, reactor, metrics = deps.config, deps.reactor, deps.metrics
    ops = OpsApi(
        version=config.gateway_version,
        aip_enabled=config.aip_enabled,
        health=health.state,
        metrics=metrics,
        clock=reactor,
        routes_providers=config.runs_gateway,
    )
    proxy = None
    if config.runs_gateway:
        if policies or len(sinks) > 1:
            raise ValueError("the proxy takes no request policies and one exchange sink")
        proxy = ProviderProxy.from_config(config, reactor, metrics, observe=sinks[0] if sinks else None)
    resources: Mapping[str, IResource] = deps.part("provider_resources", lambda: proxy.resources() if proxy is not None else {})
    site = GatewaySite(build_root(ops, resources), reactor, max_request_body_bytes=config.http.max_request_body_bytes)
    endpoint = deps.part("endpoint", lambda: serverFromString(reactor, config.http.endpoint))
    return Http(ops=ops, proxy=proxy, site=site, endpoint=endpoint)


class _DatabaseProbe:
    """
    Readiness ping for PostgreSQL. Without a connection it waits for the pool's next connection
    attempt (within the probe's timeout), so it reports a recovery or the real reason of a failure
    rather than "not connected yet".
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    def ping(self) -> Deferred[float]:
        database = self._database
        if not database.connected:
            return database.when_attempted().addCallback(lambda _: database.ping())
        return database.ping()


def _outbound_client(reactor: Any) -> Any:
    """An HTTP client for the daemon's own calls (heartbeat): no cookies kept, no connection reuse."""
    import treq
    from http.cookiejar import CookieJar, DefaultCookiePolicy
    from twisted.web.client import Agent, HTTPConnectionPool

    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)), cookiejar=jar)


def build_service(
    config: Config,
    reactor: Any,
    *,
    replace: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    log_observer: ILogObserver | None = None,
    handle_signals: bool = False,
) -> GatewayService:
    """The parts `build` makes, run by a `GatewayService`."""
    parts = build(config, reactor, replace=replace, metrics=metrics)
    return GatewayService(parts, config, reactor, log_observer=log_observer, handle_signals=handle_signals)


def build_daemon(config: Config, reactor: Any, stdout: IO[str] | None = None) -> GatewayService:
    """The service twistd runs, with JSON logging set up for `config` and the signals taken over."""
    from smoltbot.logs import bridge_stdlib_logging, make_observer

    observer = make_observer(stdout or sys.stdout, config.service_name, config.logging.level)
    bridge_stdlib_logging(config.logging.level)
    return build_service(config, reactor, log_observer=observer, handle_signals=True)
