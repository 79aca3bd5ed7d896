"""
The agent registry: the `agents` rows (DESIGN §1.3), kept up to date off the request path.

`AgentRegistry.seen` is called once per proxied request with the agent's id and hash. An agent
this process has not seen yet is queued for an insert-if-absent (`ON CONFLICT DO NOTHING`, so
concurrent first requests, in one process or many, create exactly one row); a known one gets a
`last_seen` update at most once per `touch_interval`. A loop writes both in batches. Nothing here
is durable: agent rows are derivable from the traffic, so sightings that cannot be written during
an outage are retried while they fit in a bounded map, and otherwise forgotten, to be queued again
by the agent's next request.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from smoltbot.metrics import Metrics
from smoltbot.store.pool import QueryRunner
from smoltbot.store.queries import agents as queries
from smoltbot.util.backoff import Backoff, backoff_policy
from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.errors import describe
from smoltbot.util.periodic import PeriodicService

_AGENT_ID = re.compile(r"smolt-[0-9a-f]{8}")
_AGENT_HASH = re.compile(r"[0-9a-f]{16}")
_LOG_REPEAT_INTERVAL = 60.0  # seconds between two lines about the same lasting trouble


class AgentRegistry(PeriodicService):
    """
    Registers agents on first sight and keeps their `last_seen` fresh, in batches, in the background.

    `seen(agent_id, agent_hash, when)` is the proxy's entry point: constant time, never raises,
    never waits. At most `max_pending` sightings wait for PostgreSQL; more are counted
    (`gateway_agent_sightings_dropped_total`) and forgotten. After a failed write the loop waits
    a backoff (from `retry_delay`, doubling up to `max_retry_delay`).
    """

    log = Logger()

    def __init__(
        self,
        database: QueryRunner,
        *,
        clock: IReactorTime,
        metrics: Metrics,
        flush_interval: float = 1.0,
        touch_interval: float = 60.0,
        max_pending: int = 10_000,
        max_known: int = 100_000,
        batch_size: int = 500,
        write_timeout: float = 5.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        super().__init__(clock=clock, interval=flush_interval)
        self._database = database
        self._metrics = metrics
        self._touch_interval = touch_interval
        self._max_pending = max_pending
        self._max_known = max_known
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._backoff = Backoff(backoff_policy(retry_delay, max_retry_delay))
        self._retry_at = 0.0  # no write before this time: the backoff after a failure
        self._known: dict[str, float] = {}  # agent id -> when its last sighting was queued
        self._new: dict[str, tuple[str, float]] = {}  # agent id -> (hash, first sighting), to insert
        self._touch: dict[str, float] = {}  # agent id -> last_seen, to update
        self._flushing: Deferred[None] | None = None
        # Each lasting trouble logged once a minute at most: writes failing (until one succeeds),
        # malformed identities, sightings dropped for want of room.
        self._outage = FailureEpisode(clock, repeat_every=_LOG_REPEAT_INTERVAL)
        self._malformed = FailureEpisode(clock, level=LogLevel.error, repeat_every=_LOG_REPEAT_INTERVAL)
        self._full = FailureEpisode(clock, repeat_every=_LOG_REPEAT_INTERVAL)

    @property
    def pending(self) -> int:
        """Sightings waiting to be written."""
        return len(self._new) + len(self._touch)

    def seen(self, agent_id: str, agent_hash: str, when: float) -> None:
        """Note that `agent_id` (whose key hashes to `agent_hash`) made a request at `when` (unix seconds)."""
        try:
            last = self._known.get(agent_id)
            if last is not None:
                if when - last >= self._touch_interval:
                    self._known[agent_id] = when
                    if agent_id in self._touch or self._admit(agent_id):
                        self._touch[agent_id] = max(when, self._touch.get(agent_id, when))
                return
            well_formed = _AGENT_ID.fullmatch(agent_id) and _AGENT_HASH.fullmatch(agent_hash)
            if not well_formed or agent_id[6:] != agent_hash[:8]:
                self._malformed.failed(self.log, "ignoring a malformed agent identity")  # not the value: it may be anything
                return
            if len(self._known) >= self._max_known:
                self._known.clear()  # a flood of new agents: forgetting costs at most redundant inserts
            self._known[agent_id] = when
            if self._admit(agent_id):
                self._new[agent_id] = (agent_hash, when)
        except Exception:
            self.log.failure("noting an agent sighting failed")

    def _admit(self, agent_id: str) -> bool:
        """Whether one more sighting fits; if not it is counted and forgotten, so the next request queues it again."""
        if self.pending < self._max_pending:
            return True
        self._known.pop(agent_id, None)
        self._metrics.agent_sightings_dropped.inc()
        message = "{count} agent sightings wait for PostgreSQL: dropping new ones"
        self._full.failed(self.log, message, count=self.pending)
        return False

    # -- the Service

    def stopService(self) -> Deferred[None]:
        """Stop the loop and write what is pending once (bounded by the write timeout); the rest is forgotten."""
        super().stopService()
        return Deferred.fromCoroutine(self._final_flush())

    async def _final_flush(self) -> None:
        if self._flushing is not None:
            await self._flushing
        if self.pending:
            await self._start_flush()

    # -- writing

    def tick(self) -> None:
        """Write what is pending, unless a write is under way or the backoff after a failure lasts."""
        if self._flushing is None and self.pending and self._clock.seconds() >= self._retry_at:
            self._start_flush()

    def _start_flush(self) -> Deferred[None]:
        d = self._flushing = Deferred.fromCoroutine(self._flush())
        d.addErrback(lambda f: self.log.failure("writing agents failed", f))

        def done(result: None) -> None:
            self._flushing = None

        return d.addCallback(done)

    async def _flush(self) -> None:
        try:
            while self._new:
                await self._insert(self._take(self._new))
            while self._touch:
                await self._update(self._take(self._touch))
        except _Failed:
            return
        self._outage.recovered(self.log, "PostgreSQL takes agent updates again")
        self._retry_at = 0.0
        self._backoff.succeeded()

    def _take(self, pending: dict[str, Any]) -> dict[str, Any]:
        # Sorted, so that concurrent writers lock rows in the same order (no deadlocks between processes).
        ids = sorted(pending)[: self._batch_size]
        return {agent_id: pending.pop(agent_id) for agent_id in ids}

    async def _insert(self, batch: dict[str, tuple[str, float]]) -> None:
        rows = await self._write(queries.insert_new(batch), batch, self._new, "agent_upsert")
        inserted = {agent_id for (agent_id,) in rows}
        for agent_id, (_, when) in batch.items():  # rows that existed already (another process, an earlier run)
            if agent_id not in inserted and (agent_id in self._touch or self._admit(agent_id)):
                self._touch[agent_id] = max(when, self._touch.get(agent_id, when))

    async def _update(self, batch: dict[str, float]) -> None:
        await self._write(queries.update_last_seen(batch), batch, self._touch, "agent_last_seen")

    async def _write(
        self, statement: tuple[str, list[Any]], batch: dict[str, Any], pending: dict[str, Any], task: str
    ) -> list[tuple[Any, ...]]:
        sql, params = statement
        try:
            rows = await self._database.run_query(sql, params, retry_idempotent=True).addTimeout(
                self._write_timeout, self._clock
            )
        except Exception as error:
            self._requeue(batch, pending)
            self._failed(error)
            raise _Failed() from None
        self._metrics.background_tasks.labels(task=task).inc()
        return rows

    def _requeue(self, batch: dict[str, Any], pending: dict[str, Any]) -> None:
        for agent_id, value in batch.items():
            if agent_id in pending:
                continue  # a newer sighting arrived meanwhile
            if self.pending < self._max_pending:
                pending[agent_id] = value
            else:
                self._known.pop(agent_id, None)
                self._metrics.agent_sightings_dropped.inc()

    def _failed(self, error: BaseException) -> None:
        timed_out = isinstance(error, DeferredTimeout)
        reason = f"no answer within {self._write_timeout:g}s" if timed_out else describe(error)
        self._retry_at = self._clock.seconds() + self._backoff.failed()
        self._outage.failed(self.log, "cannot write agents to PostgreSQL, retrying later: {error}", error=reason)


class _Failed(Exception):
    """A write failed; its batch is back in the pending map and the failure is logged."""
