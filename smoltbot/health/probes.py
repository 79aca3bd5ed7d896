"""
Readiness: the probe loop that checks Redis, PostgreSQL and the license in the background, and
the state `/health/ready` and `/health/startup` answer from without waiting on anything.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smoltbot.metrics import Metrics
from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.errors import describe
from smoltbot.util.periodic import PeriodicService


class Pingable(Protocol):
    """A dependency the probe can check: `ping()` fires with a latency in ms or fails."""

    def ping(self) -> Deferred[float]: ...


class HealthState:
    """
    What the daemon knows about its own health, updated by the probe loop and the lifecycle.

    `started` flips once the listener is up; `draining` once shutdown has begun; `checks` holds
    the latest result of each probe (DESIGN §1.2 shape). Checks added with `add_check` report
    in-process state and are read at each answer instead.
    """

    def __init__(self) -> None:
        self.started = False
        self.draining = False
        self.checks: dict[str, dict[str, Any]] = {}
        self._local: dict[str, Callable[[], dict[str, Any]]] = {}

    def add_check(self, name: str, check: Callable[[], dict[str, Any]]) -> None:
        """Report `check()` (quick, in memory, `{"ok": bool, ...}`) under `name` beside the probe results."""
        self._local[name] = check

    def current(self) -> dict[str, dict[str, Any]]:
        """The latest probe results and the in-process checks."""
        return {**self.checks, **{name: check() for name, check in self._local.items()}}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The `/health/ready` status code and body (without the timestamp)."""
        if not self.checks and not self.draining:
            return 503, {"status": "starting", "checks": {}}
        checks = self.current()
        if self.draining:
            return 503, {"status": "draining", "checks": checks}
        ok = all(check.get("ok") for check in checks.values())
        return (200 if ok else 503), {"status": "ok" if ok else "degraded", "checks": checks}

    @property
    def healthy(self) -> bool:
        """Whether every latest check passed (the heartbeat's `health_status`)."""
        return bool(self.checks) and all(check.get("ok") for check in self.current().values())


class ProbeService(PeriodicService):
    """
    Every `interval` seconds, ping Redis (`redis`) and PostgreSQL (`supabase`, the name kept for
    existing dashboards) with a timeout each and measure their latency, and read the license
    judgement; the results replace `state.checks` together when the round is done.
    """

    log = Logger()

    def __init__(
        self,
        state: HealthState,
        *,
        clock: IReactorTime,
        metrics: Metrics,
        kv: Pingable,
        kv_mode: str,
        database: Pingable | None,
        license_check: Callable[[], dict[str, Any]],
        interval: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(clock=clock, interval=interval)
        self._state = state
        self._metrics = metrics
        self._kv = kv
        self._kv_mode = kv_mode
        self._database = database
        self._license_check = license_check
        self._timeout = timeout
        self._failing: dict[str, FailureEpisode] = {}  # by check: logged when it starts failing and recovers

    def tick(self) -> Deferred[None]:
        """Run every probe once and publish the results."""
        probes = [self._ping("redis", self._kv)]
        if self._database is not None:
            probes.append(self._ping("supabase", self._database))
        done = DeferredList(probes, consumeErrors=True)

        def publish(results: list[tuple[bool, tuple[str, dict[str, Any]]]]) -> None:
            checks = dict(value for success, value in results if success)
            checks["license"] = self._license_check()
            for name, check in checks.items():
                self._metrics.health_check_ok.labels(check=name).set(1 if check.get("ok") else 0)
                if "latencyMs" in check:
                    self._metrics.health_check_latency.labels(check=name).set(check["latencyMs"] / 1000.0)
            self._report_changes(checks)
            self._state.checks = checks
            self.log.debug("health probes: {summary}", summary=", ".join(f"{n}={'ok' if c.get('ok') else 'FAIL'}" for n, c in checks.items()))

        return done.addCallback(publish)

    def _ping(self, name: str, dependency: Pingable) -> Deferred[tuple[str, dict[str, Any]]]:
        started = self._clock.seconds()

        def elapsed_ms() -> float:
            return round((self._clock.seconds() - started) * 1000.0, 1)

        def ok(latency: float) -> tuple[str, dict[str, Any]]:
            check: dict[str, Any] = {"ok": True, "latencyMs": round(latency, 1)}
            if name == "redis":
                check["mode"] = self._kv_mode
            return name, check

        def failed(failure: Any) -> tuple[str, dict[str, Any]]:
            if failure.check(TimeoutError):
                reason = f"no answer within {self._timeout:g}s"
            else:
                reason = describe(failure)
            check: dict[str, Any] = {"ok": False, "latencyMs": elapsed_ms(), "error": reason}
            if name == "redis":
                check["mode"] = self._kv_mode
            return name, check

        d = maybeDeferred(dependency.ping)
        d.addTimeout(self._timeout, self._clock)
        return d.addCallbacks(ok, failed)

    def _report_changes(self, checks: dict[str, dict[str, Any]]) -> None:
        """Log each check that starts failing (with its first reason) and each that recovers; not the rounds between."""
        for name, check in checks.items():
            episode = self._failing.get(name)
            if check.get("ok"):
                if episode is not None:
                    episode.recovered(self.log, "health check {check} recovered", check=name)
                continue
            if episode is None:
                episode = self._failing[name] = FailureEpisode(self._clock)
            reason = check.get("error") or check.get("warning") or "not ok"
            episode.failed(self.log, "health check {check} failing: {reason}", check=name, reason=reason)
