"""
The request recorder: every `RequestRecord` the proxy hands over ends up in `request_records`
exactly once, without the request waiting for it, through PostgreSQL outages and restarts.

`Recorder.record` appends to a bounded in-memory queue and returns. A flush loop writes the queue
in batches (one idempotent multi-row INSERT each, keyed by request id). While PostgreSQL fails
or is slow, batches go to the on-disk spool (`smoltbot.records.spool`) instead, and so does the oldest
part of the queue when it overflows: memory stays flat, the disk absorbs the outage. Once
PostgreSQL answers again, the spool is replayed oldest first, alternating with live batches, and
a spool left by an earlier run is replayed the same way. A record is dropped only when the spool
cannot be written either; each drop is counted (`gateway_traces_dropped_total`) and logged.

Spool I/O runs on one dedicated worker thread (`WorkerThread`), so it never blocks the reactor
and appends stay in order.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, NamedTuple, Protocol, TypeVar

import psycopg2
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from smoltbot.metrics import Metrics
from smoltbot.records.row import RequestRecord
from smoltbot.records.spool import ReplayBatch, Spool
from smoltbot.store.pool import QueryRunner
from smoltbot.store.queries import request_records
from smoltbot.util.backoff import Backoff, backoff_policy
from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.errors import describe
from smoltbot.util.periodic import PeriodicService

T = TypeVar("T")

_REFUSED = (psycopg2.DataError, psycopg2.IntegrityError)  # the schema rejects a value: retrying cannot help
_LOG_REPEAT_INTERVAL = 60.0  # seconds between two lines about the same lasting trouble

# The recorder's life: it takes records from construction on; `stopService` makes it write out
# what it holds (to PostgreSQL until the stop deadline, then to the spool); once that is done it
# is closed, and a record handed over then is dropped.
_ACCEPTING, _STOPPING, _CLOSED = "accepting", "stopping", "closed"


class Worker(Protocol):
    """Runs blocking calls one at a time, in the order given, off the reactor thread."""

    def start(self) -> None: ...

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]: ...

    def stop(self) -> None: ...


class WorkerThread:
    """A `Worker` on one dedicated thread of its own, stopped at reactor shutdown at the latest."""

    def __init__(self, reactor: Any, name: str = "smoltbot-spool") -> None:
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name)
        self._trigger: Any = None

    def start(self) -> None:
        """Start the thread."""
        self._pool.start()
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Call `fn(*args)` on the thread; the Deferred fires on the reactor thread with its result."""
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def stop(self) -> None:
        """Stop the thread (joins it: call once every `run` has fired)."""
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
            self._pool.stop()


class SpoolBacklog(NamedTuple):
    """Records waiting in memory, and the bytes and segment files waiting in the spool folder."""

    queued: int
    spool_bytes: int
    spool_segments: int


class Recorder(PeriodicService):
    """
    Writes request records to PostgreSQL in batches, through the spool when it must.

    `record(record)` is the proxy's entry point: constant time, never raises, never blocks.
    `flush_interval` is the longest a record waits in the queue while PostgreSQL is up; a full
    batch (`batch_size`) is flushed at once. An insert that fails or outlasts `write_timeout`
    sends its batch to the spool, and PostgreSQL is tried again after a backoff (from
    `retry_delay`, doubling up to `max_retry_delay`). `stopService` writes what is queued to
    PostgreSQL for up to `stop_timeout` seconds, then to the spool.
    """

    log = Logger()

    def __init__(
        self,
        database: QueryRunner,
        spool: Spool,
        *,
        clock: IReactorTime,
        metrics: Metrics,
        worker: Worker,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        write_timeout: float = 5.0,
        stop_timeout: float = 5.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0 or write_timeout <= 0 or retry_delay <= 0:
            raise ValueError("sizes must be at least 1, intervals and timeouts positive")
        super().__init__(clock=clock, interval=flush_interval)
        self._database = database
        self._spool = spool
        self._metrics = metrics
        self._worker = worker
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._stop_timeout = stop_timeout
        self._backoff = Backoff(backoff_policy(retry_delay, max_retry_delay))
        self._queue: deque[RequestRecord] = deque()
        # Spool writes are group commits: records given while one is under way go in the next.
        self._spool_pending: list[RequestRecord] = []
        self._spool_waiters: list[Deferred[None]] = []
        self._spool_writing = 0  # records in the write under way
        self._busy = False  # a pump is running
        self._pump_done: list[Deferred[None]] = []
        self._kick_call: IDelayedCall | None = None
        self._due = False  # the flush interval has passed: write even a partial batch
        self._replayed_last = True
        self._replay_idle = False  # nothing to replay until the next tick
        self._retry_at = 0.0  # no PostgreSQL write before this time: the backoff after a costly failure
        self._phase = _ACCEPTING
        self._stop_deadline = 0.0
        # PostgreSQL refusing records, from the first failure until a write succeeds.
        self._outage = FailureEpisode(clock, repeat_every=_LOG_REPEAT_INTERVAL)
        # Lasting trouble that costs records or spool data, by kind: each logged once a minute at most.
        self._trouble: dict[str, FailureEpisode] = {}
        metrics.trace_queue_depth.set_function(lambda: self.spool_backlog.queued)
        metrics.trace_spool_bytes.set_function(lambda: spool.bytes)

    # -- the proxy's side

    def record(self, record: RequestRecord) -> None:
        """Queue `record` for writing. Constant time; never raises; never waits on I/O."""
        try:
            if self._phase == _CLOSED:
                self._drop(1, "the recorder has stopped")
            elif not isinstance(record, RequestRecord):
                self._drop(1, f"not a RequestRecord: {type(record).__name__}")
            elif len(self._queue) >= self._queue_size and not self._spill():
                self._drop(1, "the queue is full and the spool cannot keep up with the overflow")
            else:
                self._queue.append(record)
                if len(self._queue) >= self._batch_size and self.running and not self._busy and self._kick_call is None:
                    self._kick_call = self._clock.callLater(0, self._kicked)
        except Exception:
            self.log.failure("recording a request failed")

    @property
    def spool_backlog(self) -> SpoolBacklog:
        """What waits to be written: records in memory, bytes and segments in the spool."""
        queued = len(self._queue) + len(self._spool_pending) + self._spool_writing
        return SpoolBacklog(queued, self._spool.bytes, self._spool.segments)

    def health_check(self) -> dict[str, Any]:
        """The `recorder` entry of `/health/ready`: a backlog is reported, only an unwritable spool fails it."""
        backlog = self.spool_backlog
        error = self._spool.error
        check: dict[str, Any] = {"ok": error is None, "queue": backlog.queued, "spoolBytes": backlog.spool_bytes}
        if error is not None:
            check["error"] = f"spool not writable: {error}"
        return check

    # -- the Service

    def startService(self) -> None:
        """Start the worker, open the spool (counting what an earlier run left), then the flush loop."""
        self._worker.start()
        self._io("spool_open", self._spool.open).addCallback(self._spool_opened)
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Write the queue to PostgreSQL (to the spool past `stop_timeout`), seal the spool, stop the worker."""
        super().stopService()
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        self._phase = _STOPPING
        self._stop_deadline = self._clock.seconds() + self._stop_timeout
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        while self._busy or self._queue or self._spool_writing or self._spool_pending:
            if self._busy:
                await self._when_pump_done()
            elif self._queue:
                await self._pump()
            else:
                await self._to_spool([])  # fires once the writes under way are done
        self._phase = _CLOSED
        await self._io("spool_close", self._spool.close)
        self._worker.stop()
        if self._spool.bytes:
            self.log.info("{bytes} bytes of request records stay in the spool", bytes=self._spool.bytes)

    # -- the flush loop

    def tick(self) -> None:
        """Write what is queued (a partial batch too), retry a spool folder that failed, look for spool to replay."""
        self._due = bool(self._queue)
        self._replay_idle = False
        if self._spool.error is not None:
            self._io("spool_open", self._spool.open).addCallback(self._spool_opened)
        self._kick()

    def _kicked(self) -> None:
        self._kick_call = None
        self._kick()

    def _kick(self) -> None:
        if self._busy:
            return
        d = Deferred.fromCoroutine(self._pump())
        d.addErrback(lambda f: self.log.failure("recorder flush failed", f))

    def _when_pump_done(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._pump_done.append(d)
        return d

    async def _pump(self) -> None:
        """Write live batches and replay spooled ones, alternating while both have work, until neither has."""
        self._busy = True
        try:
            while True:
                stopping = self._phase == _STOPPING
                live = len(self._queue) >= self._batch_size or (bool(self._queue) and (self._due or stopping))
                replay = not (stopping or self._replay_idle or self._spool.error) and self._database_usable()
                if live and not (replay and not self._replayed_last):
                    self._replayed_last = False
                    await self._flush(self._take())
                elif replay:
                    self._replayed_last = True
                    await self._replay()
                else:
                    break
        finally:
            self._busy = False
            waiters, self._pump_done = self._pump_done, []
            for waiter in waiters:
                waiter.callback(None)

    def _take(self) -> list[RequestRecord]:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        if len(batch) < self._batch_size:
            self._due = False
        return batch

    async def _flush(self, batch: list[RequestRecord]) -> None:
        if self._database_usable():
            if await self._insert(batch, "record_flush"):
                return
        elif not self._database.connected:
            self._spooling(getattr(self._database, "last_error", None) or "no database connection")
        await self._to_spool(batch)

    async def _replay(self) -> None:
        try:
            batch: ReplayBatch | None = await self._worker.run(self._spool.read, self._batch_size)
        except OSError as error:
            self._replay_idle = True
            self._log_error("spool_read", "cannot read the spool: {error}", error=describe(error))
            return
        if batch is None:
            self._replay_idle = True
            return
        if batch.records and not await self._insert(batch.records, "spool_replay"):
            return  # the segment stays claimed; the same lines are read again after the backoff
        try:
            await self._worker.run(self._spool.commit, batch)
        except OSError as error:
            self._replay_idle = True
            self._log_error("spool_read", "cannot delete a spool segment: {error}", error=describe(error))
            return
        if batch.corrupt:
            self._metrics.trace_spool_corrupt_lines.inc(batch.corrupt)
            message = "skipped {count} corrupt lines in spool segment {segment}"
            self._log_error("spool_corrupt", message, count=batch.corrupt, segment=batch.segment)
        if batch.finished:
            self.log.info("spool segment {segment} replayed into PostgreSQL", segment=batch.segment)

    # -- PostgreSQL

    def _database_usable(self) -> bool:
        now = self._clock.seconds()
        past_deadline = self._phase == _STOPPING and now >= self._stop_deadline
        return self._database.connected and now >= self._retry_at and not past_deadline

    async def _insert(self, records: list[RequestRecord], task: str) -> bool:
        """Write `records` in one statement; False (and a backoff) when PostgreSQL failed or was too slow."""
        started = self._clock.seconds()
        try:
            try:
                written = await self._insert_rows(records)
            except _REFUSED:
                written = await self._insert_each(records)
        except Exception as error:
            self._metrics.trace_flush_duration.observe(self._clock.seconds() - started)
            self._database_failed(error)
            return False
        self._metrics.trace_flush_duration.observe(self._clock.seconds() - started)
        self._metrics.traces_written.inc(written)
        self._metrics.background_tasks.labels(task=task).inc()
        self._outage.recovered(self.log, "PostgreSQL takes request records again")
        self._retry_at = 0.0
        self._backoff.succeeded()
        return True

    def _insert_rows(self, records: list[RequestRecord]) -> Deferred[int]:
        rows = "[" + ",".join(record.to_json() for record in records) + "]"
        d = self._database.run_query(request_records.INSERT, (rows,), retry_idempotent=True)
        d.addTimeout(self._write_timeout, self._clock)
        return d.addCallback(lambda rows: rows[0][0])

    async def _insert_each(self, records: list[RequestRecord]) -> int:
        """A batch the schema refused (a value it rejects): write its records one by one, dropping those refused."""
        written = 0
        for record in records:
            try:
                written += await self._insert_rows([record])
            except _REFUSED as error:
                self._metrics.traces_dropped.inc()
                self.log.error(
                    "request record {request_id} refused by PostgreSQL, dropped: {error}",
                    request_id=record.request_id,
                    error=describe(error),
                )
        return written

    def _database_failed(self, error: BaseException) -> None:
        timed_out = isinstance(error, DeferredTimeout)
        reason = f"no answer within {self._write_timeout:g}s" if timed_out else describe(error)
        if self._database.connected:  # a failure that cost time: back off before the next attempt
            self._retry_at = self._clock.seconds() + self._backoff.failed()
        self._spooling(reason)

    def _spooling(self, reason: str) -> None:
        """PostgreSQL cannot take records: note it (a warning, rate-limited) until a write succeeds again."""
        self._outage.failed(self.log, "PostgreSQL cannot take request records, spooling: {error}", error=reason)

    # -- the spool

    def _to_spool(self, records: list[RequestRecord]) -> Deferred[None]:
        """Append `records` to the spool with the next write; fires once that is done (a failed one counts drops)."""
        self._spool_pending.extend(records)
        done: Deferred[None] = Deferred()
        self._spool_waiters.append(done)
        if not self._spool_writing:
            self._write_spool()
        return done

    def _write_spool(self) -> None:
        records, self._spool_pending = self._spool_pending, []
        waiters, self._spool_waiters = self._spool_waiters, []
        if records:
            self._spool_writing = len(records)
            written = self._worker.run(self._spool.append, records).addBoth(self._spool_written, records, waiters)
            written.addErrback(lambda f: self.log.failure("spool write bookkeeping failed", f))
        else:
            for waiter in waiters:
                waiter.callback(None)

    def _spool_written(self, result: object, records: list[RequestRecord], waiters: list[Deferred[None]]) -> None:
        self._spool_writing = 0
        if isinstance(result, Failure):
            self._drop(len(records), f"spool not writable: {describe(result.value)}")
        else:
            self._metrics.background_tasks.labels(task="spool_write").inc()
        for waiter in waiters:
            waiter.callback(None)
        if self._spool_pending or self._spool_waiters:
            self._write_spool()

    def _spill(self) -> bool:
        """Move the oldest batch of a full queue to the spool; False when the spool is a whole queue behind already."""
        if len(self._spool_pending) + self._spool_writing >= self._queue_size:
            return False
        self._spool_pending.extend(self._take())
        if not self._spool_writing:
            self._write_spool()
        return True

    def _spool_opened(self, result: object) -> None:
        backlog = self.spool_backlog
        if backlog.spool_bytes:
            self.log.info(
                "request-record spool holds {bytes} bytes in {segments} segments: replayed once PostgreSQL answers",
                bytes=backlog.spool_bytes,
                segments=backlog.spool_segments,
            )

    def _io(self, task: str, fn: Callable[[], None]) -> Deferred[None]:
        """Run a spool call whose failure only needs logging (the spool keeps its `error` for readiness)."""

        def failed(failure: Any) -> None:
            if failure.check(OSError):
                message = "request-record spool {folder} not usable: {error}"
                self._log_error(task, message, folder=self._spool.directory, error=describe(failure.value))
            else:
                self.log.failure("request-record spool call failed", failure)

        return self._worker.run(fn).addErrback(failed)

    # -- drops and errors

    def _drop(self, count: int, reason: str) -> None:
        self._metrics.traces_dropped.inc(count)
        self._log_error("drop", "dropped {count} request records: {reason}", count=count, reason=reason)

    def _log_error(self, key: str, message: str, **fields: Any) -> None:
        """Log an error of kind `key` (a drop, an unusable spool); a kind that keeps recurring, once a minute."""
        episode = self._trouble.get(key)
        if episode is None:
            episode = self._trouble[key] = FailureEpisode(self._clock, level=LogLevel.error, repeat_every=_LOG_REPEAT_INTERVAL)
        episode.failed(self.log, message, **fields)
