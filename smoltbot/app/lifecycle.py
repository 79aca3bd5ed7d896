"""
The daemon's lifecycle: building every service from a `Config`, binding the listener, signals,
systemd notifications, and the ordered, draining shutdown.

`GatewayService` is the one composition root: `smoltbot.tap.makeService` builds it for twistd,
tests build it directly with their own reactor and config.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
import socket
import sys
from typing import IO, Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger

from smoltbot.records.agents import AgentRegistry
from smoltbot.config import Config
from smoltbot.store.pool import Database
from smoltbot.health.probes import HealthState, ProbeService
from smoltbot.health.heartbeat import HeartbeatService
from smoltbot.store.kv import make_kv
from smoltbot.health.license import LicenseMonitor
from smoltbot.metrics import Metrics
from smoltbot.proxy import ProviderProxy
from smoltbot.records.sink import RequestRecording
from smoltbot.records.writer import Recorder, Worker, WorkerThread
from smoltbot.records.row import new_instance_id
from smoltbot.records.spool import Spool
from smoltbot.http.ops import OpsApi
from smoltbot.http.root import build_root
from smoltbot.http.site import GatewaySite


class StartupError(Exception):
    """The daemon cannot start; the message is the one line an operator needs."""


def listen_error_message(error: CannotListenError, host: str, port: int) -> str:
    """One clear line for a failed bind, naming the address and the fix."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    code = getattr(error.socketError, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"listen EADDRINUSE: address already in use {address} "
            f"(set PORT, or stop the process using it: lsof -i :{port})"
        )
    if code == errno.EACCES:
        return f"listen EACCES: permission denied {address} (use a port above 1023, or grant CAP_NET_BIND_SERVICE)"
    if code == errno.EADDRNOTAVAIL:
        return f"listen EADDRNOTAVAIL: address not available {address} (set HOST to an address of this machine, or 0.0.0.0)"
    return f"listen failed on {address}: {error.socketError} (check HOST and PORT)"


def sd_notify(message: bytes, environ: dict[str, str] | None = None) -> None:
    """Tell systemd about a state change (`READY=1`, `STOPPING=1`) when run as a Type=notify unit."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message, address)
        except OSError:
            pass


class GatewayService(MultiService):
    """
    Every service of one smoltbot process, started in dependency order and stopped one after
    the other in reverse, with the HTTP listener first to close and last to open.

    Roles that serve traffic also have `recorder` (request records) and `agents` (agent rows),
    for the proxy to call when a request finishes; `instance_id` names this process in records.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        metrics: Metrics | None = None,
        log_observer: ILogObserver | None = None,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self._handle_signals = handle_signals
        self.config = config
        self._reactor = reactor
        self.log_observer = log_observer
        self.metrics = metrics or Metrics(config.gateway_version)
        self.health = HealthState()
        self.port: IListeningPort | None = None
        self._stopping: Deferred[None] | None = None
        self._started_at = reactor.seconds()

        self.database = Database(
            config.database_url,
            reactor=reactor,
            pool_size=config.database_pool_size,
            connect_timeout=config.database_connect_timeout,
            query_timeout=config.database_query_timeout,
        )
        self.database.setServiceParent(self)
        self.metrics.database_connections.set_function(lambda: self.database.connections_up)
        self.metrics.database_calls_waiting.set_function(lambda: self.database.waiting)
        self.instance_id = new_instance_id()
        self.agents: AgentRegistry | None = None
        self.recorder: Recorder | None = None
        if config.runs_gateway and config.recorder_enabled:  # after the database: they stop (and write what they hold) before it closes
            self.agents = AgentRegistry(
                self.database,
                clock=reactor,
                metrics=self.metrics,
                flush_interval=config.recorder_flush_interval,
                touch_interval=config.agent_last_seen_interval,
                max_pending=config.agent_pending_max,
                write_timeout=config.recorder_write_timeout,
            )
            self.agents.setServiceParent(self)
            self.metrics.agent_sightings_pending.set_function(lambda: self.agents.pending)
            self.recorder = Recorder(
                self.database,
                Spool(config.spool_dir, segment_bytes=config.recorder_spool_segment_bytes),
                clock=reactor,
                metrics=self.metrics,
                worker=self._spool_worker(),
                queue_size=config.recorder_queue_size,
                batch_size=config.recorder_batch_size,
                flush_interval=config.recorder_flush_interval,
                write_timeout=config.recorder_write_timeout,
                stop_timeout=config.recorder_stop_timeout,
            )
            self.recorder.setServiceParent(self)
            self.health.add_check("recorder", self.recorder.health_check)
        self.kv = make_kv(
            config.redis_url,
            reactor=reactor,
            metrics=self.metrics,
            op_timeout=config.redis_op_timeout,
            connect_timeout=config.redis_connect_timeout,
        )
        if IService.providedBy(self.kv):
            self.kv.setServiceParent(self)
        self.license = LicenseMonitor(
            config.license_jwt,
            clock=reactor,
            leeway=config.license_leeway,
            public_key=config.license_public_key,
            secret=config.license_secret,
            interval=config.license_check_interval,
        )
        self.license.setServiceParent(self)
        self.probes = ProbeService(
            self.health,
            clock=reactor,
            metrics=self.metrics,
            kv=self.kv,
            kv_mode=config.kv_mode,
            database=_DatabaseProbe(self.database),
            license_check=self._license_check,
            interval=config.probe_interval,
            timeout=config.probe_timeout,
        )
        self.probes.setServiceParent(self)
        self.heartbeat: HeartbeatService | None = None
        if config.heartbeat_url:
            self.heartbeat = HeartbeatService(
                config.heartbeat_url,
                license_jwt=config.license_jwt,
                deployment_id=config.deployment_id,
                version=config.gateway_version,
                interval=config.heartbeat_interval,
                timeout=config.heartbeat_timeout,
                reactor=reactor,
                http_client=_outbound_client(reactor),
                health_status=lambda: "healthy" if self.health.healthy else "degraded",
                metrics=self.metrics,
                started_at=self._started_at,
            )
            self.heartbeat.setServiceParent(self)

        self.ops = OpsApi(
            version=config.gateway_version,
            aip_enabled=config.aip_enabled,
            health=self.health,
            metrics=self.metrics,
            clock=reactor,
            routes_providers=config.runs_gateway,
        )
        self.proxy: ProviderProxy | None = None
        if config.runs_gateway:
            recording = None
            if self.recorder is not None and self.agents is not None:
                recording = RequestRecording(
                    recorder=self.recorder,
                    agents=self.agents,
                    metrics=self.metrics,
                    gateway_version=config.gateway_version,
                    instance_id=self.instance_id,
                )
            self.proxy = ProviderProxy.from_config(config, reactor, self.metrics, observe=recording)
        self.site = GatewaySite(
            build_root(self.ops, self._provider_resources()), reactor, max_request_body_bytes=config.max_request_body_bytes
        )

    def _provider_resources(self) -> dict:
        """The provider resources this role serves (none for the scheduler)."""
        return self.proxy.resources() if self.proxy is not None else {}

    def _spool_worker(self) -> Worker:
        """The thread the recorder's spool I/O runs on."""
        return WorkerThread(self._reactor)

    def _license_check(self) -> dict[str, Any]:
        judgement = self.license.current
        check: dict[str, Any] = {"ok": judgement.ok}
        if judgement.warning:
            check["warning"] = judgement.warning
        return check

    def privilegedStartService(self) -> None:
        """Bind the listener first (it may need privileges), failing with one clear line."""
        try:
            self.port = self._reactor.listenTCP(self.config.port, self.site, backlog=1024, interface=self.config.host)
        except CannotListenError as e:
            raise StartupError(listen_error_message(e, self.config.host, self.config.port)) from None
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        """The reactor runs: take over the signals, then announce the daemon as started."""
        if self._handle_signals:
            self.install_signal_handlers()
        self.health.started = True
        self.log.info(
            "smoltbot {version} starting: role={role} python={python_version} kv={kv_mode} listening on {host}:{port}",
            version=self.config.gateway_version,
            role=self.config.role,
            python_version=platform.python_version(),
            kv_mode=self.config.kv_mode,
            host=self.config.host,
            port=self.listening_port,
            pid=os.getpid(),
        )
        if self.heartbeat is None:
            self.log.info("heartbeat disabled (HEARTBEAT_URL is empty)")
        sd_notify(b"READY=1")

    @property
    def listening_port(self) -> int:
        """The bound TCP port (differs from the configured one when that was 0)."""
        return self.port.getHost().port if self.port is not None else self.config.port

    def install_signal_handlers(self) -> None:
        """
        Handle SIGTERM and SIGINT ourselves: drain, then stop the reactor with exit status 0
        (twistd's own handlers make it re-raise the signal and exit 143). A second signal
        during the drain cuts it short.
        """

        def handler(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(self._on_signal, signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping is not None:
            self.log.warn("{signal} again: cutting the drain short", signal=name)
            self.site.abort_in_flight()
            return
        self.log.info("{signal} received: draining", signal=name)
        self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = self._drain_and_stop()
        return self._stopping

    @inlineCallbacks
    def _drain_and_stop(self):
        config = self.config
        sd_notify(b"STOPPING=1")
        self.health.draining = True
        self.site.begin_draining()
        if config.shutdown_delay > 0:
            self.log.info("readiness reports draining; closing the listener in {delay}s", delay=config.shutdown_delay)
            yield deferLater(self._reactor, config.shutdown_delay)
        if self.port is not None:
            yield self.port.stopListening()
        if self.site.in_flight:
            self.log.info(
                "waiting up to {timeout}s for {count} requests in flight",
                timeout=config.shutdown_drain_timeout,
                count=self.site.in_flight,
            )
            idle = self.site.when_idle()
            idle.addTimeout(config.shutdown_drain_timeout, self._reactor)
            try:
                yield idle
            except Exception:
                self.log.warn(
                    "drain timeout of {timeout}s reached: aborting {count} requests",
                    timeout=config.shutdown_drain_timeout,
                    count=self.site.in_flight,
                )
                self.site.abort_in_flight()
        if self.proxy is not None:
            yield self.proxy.close()
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                self.log.failure("stopping {service} failed", service=type(service).__name__)
        self.log.info("smoltbot stopped")


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


def build_daemon(config: Config, reactor: Any, stdout: IO[str] | None = None) -> GatewayService:
    """The service twistd runs, with JSON logging set up for `config`."""
    from smoltbot.logs import bridge_stdlib_logging, make_observer

    observer = make_observer(stdout or sys.stdout, config.service_name, config.log_level)
    bridge_stdlib_logging(config.log_level)
    return GatewayService(config, reactor, log_observer=observer, handle_signals=True)
