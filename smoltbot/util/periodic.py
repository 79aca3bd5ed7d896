"""
`PeriodicService`: the one way this daemon runs a task at start and then every N seconds.

A bare `LoopingCall` stops for ever when its function raises, and happily starts a new run
while the last one is still waiting on the network. This base does neither: a failing run is
logged and the loop goes on; a run that is still pending makes the next one skip.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class PeriodicService(Service):
    """Runs `tick()` at start and every `interval` seconds of `clock`; subclasses define `tick`."""

    log = Logger()

    def __init__(self, *, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._loop = LoopingCall(self._run)
        self._loop.clock = clock
        self._pending: Deferred[object] | None = None

    def tick(self) -> Deferred[object] | None:
        """One run. May return a Deferred; the next run waits (is skipped) until it fires."""
        raise NotImplementedError

    def skipped(self) -> None:
        """Called instead of `tick` when the previous run is still pending."""

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._pending is not None:
            self._pending.cancel()
        return None

    def _run(self) -> None:
        if self._pending is not None:
            self.skipped()
            return
        try:
            result = self.tick()
        except Exception:
            self.log.failure("{task} run failed", task=type(self).__name__)
            return
        if isinstance(result, Deferred):
            self._pending = result
            result.addErrback(self._failed)
            result.addBoth(self._settled)

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("{task} run failed", failure=failure, task=type(self).__name__)

    def _settled(self, result: object) -> None:
        self._pending = None
