"""
The PostgreSQL connection pool: the one way smoltbot talks to its database.

`Database` is a Service keeping `pool_size` txpostgres connections, each with a reconnect loop of
its own, so that the daemon neither hangs nor crashes because of the database (DESIGN §2):

- connecting happens in the background and survives a database that is down, hung or refusing
  us; host names are resolved through the reactor's resolver and handed to libpq as `hostaddr`
  (libpq never does blocking DNS, `smoltbot.store.resolve`); the connect timeout is ours (libpq
  ignores `connect_timeout` in async mode); failed attempts back off exponentially, with jitter,
  up to a few seconds (`smoltbot.util.backoff`);
- a dead connection (reset, server shutdown, failed rollback) is closed and reopened at once;
- every call fails fast with `DatabaseUnavailable` while no connection is up, and is bounded in
  time: the server cancels a statement at `statement_timeout` (= query_timeout), and if no answer
  has come `_CLIENT_GRACE` seconds later the connection is presumed hung and closed. txpostgres'
  `cancel()` is not used: it calls libpq's PQcancel, which connects and waits for the server
  synchronously with the GIL held, so against a hung server it would freeze the reactor;
- no message or log line carries the DSN's password (`smoltbot.store.dsn`), and a failure that
  repeats is logged once a minute with a count (`smoltbot.util.episodes`).

`QueryRunner` is the part of the pool that the background writers use, so tests can fake it.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, TypeVar

import psycopg2
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.txpostgres import Connection, Cursor, RollbackFailed, _PollingMixin

from smoltbot.store.dsn import dsn_secrets, libpq_params, redact_dsn
from smoltbot.store.resolve import with_hostaddr
from smoltbot.util.backoff import Backoff, backoff_policy
from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.errors import describe

T = TypeVar("T")

#: The reactor must provide IReactorTime, IReactorFDSet and IReactorPluggableNameResolver.
Reactor = Any

_CLIENT_GRACE = 0.5  # seconds past query_timeout before a silent connection is closed
_LOG_REPEAT_INTERVAL = 60.0  # seconds during which an identical failure line is not repeated
_RECONNECT_JITTER = 0.2  # reconnect delays vary by ±20%, so the pool's connections do not retry in step


class DatabaseError(Exception):
    """Base of the errors the pool raises itself; SQL errors from the server pass through as psycopg2 errors."""


class DatabaseUnavailable(DatabaseError):
    """No connection is up, the pool is stopped or saturated, or the connection died during the call."""


class QueryTimeout(DatabaseError):
    """The call did not finish within the query timeout; whether it took effect is unknown."""


class QueryRunner(Protocol):
    """What the recorder and the agent registry need of the pool: `Database` provides it, tests fake it."""

    @property
    def connected(self) -> bool: ...

    def run_query(
        self, sql: str, params: Any = None, *, retry_idempotent: bool = False
    ) -> Deferred[list[tuple[Any, ...]]]: ...


async def wait_connected(db: Database, reactor: Reactor, timeout: float) -> None:
    """Wait for `db`'s first connection; after `timeout` seconds raise DatabaseUnavailable saying why there is none."""
    try:
        await db.when_connected().addTimeout(timeout, reactor)
    except DeferredTimeout:
        reason = db.last_error or f"no connection within {timeout:g}s"
        raise DatabaseUnavailable(f"cannot reach the database {db.redacted_dsn}: {reason}") from None


def _is_dead(connection: Connection, failure: Failure) -> bool:
    """Whether `failure` means `connection` can no longer be used (as opposed to an SQL error)."""
    if connection.pollable() is None or connection.closed:
        return True
    if failure.check(psycopg2.InterfaceError, RollbackFailed, ConnectionDone, ConnectionLost):
        return True
    # Errors the server reports carry an SQLSTATE; libpq's own (socket, protocol) do not.
    return bool(failure.check(psycopg2.OperationalError)) and failure.value.pgcode is None


class _Connection(Connection):
    """A txpostgres connection that reports its loss to the pool instead of raising into the reactor."""

    def __init__(self, reactor: Reactor, on_lost: Callable[[_Connection, Failure], None]) -> None:
        super().__init__(reactor)
        self._on_lost = on_lost

    def doRead(self) -> Exception | None:
        # txpostgres' version lets a socket error raise into the reactor (logged as unhandled),
        # and re-registers the socket of a failed connection attempt (fd -1), which raises too.
        try:
            _PollingMixin.doRead(self)
        except psycopg2.Error as error:
            return error  # the reactor then calls connectionLost, which reports the loss
        if self.fileno() >= 0:
            self.checkForNotifies()
            self.reactor.addReader(self)
        return None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._on_lost(self, reason)

    def close(self) -> None:
        if self._connection is not None:
            super().close()


def _interaction(cursor: Cursor, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """Call an interaction function; a coroutine it returns is run as a Deferred."""
    result = fn(cursor, *args, **kw)
    return Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result


@dataclass(eq=False)
class _Slot:
    """One place in the pool: its connection when up, the call running on it, its pending attempt."""

    backoff: Backoff  # delays between this place's failed connection attempts
    conn: _Connection | None = None
    op: _Operation | None = None
    attempt: Deferred[_Connection] | None = None  # a connection attempt in progress
    opening: _Connection | None = None  # the connection that attempt is opening
    timer: IDelayedCall | None = None  # the next attempt, or the running attempt's deadline


@dataclass(eq=False)
class _Operation:
    """One call: the work to run on a connection and the caller's Deferred."""

    work: Callable[[Connection], Deferred[Any]]
    retry: bool
    result: Deferred[Any]
    deadline: IDelayedCall | None = None
    slot: _Slot | None = None
    retried: bool = False


class Database(Service):
    """
    A pool of PostgreSQL connections that never makes its caller wait on a database that is away.

    `dsn` is a `postgresql://`/`postgres://` URL or a libpq key=value string. Every call returns a
    Deferred, fails at once with `DatabaseUnavailable` while no connection is up, and otherwise
    settles within `query_timeout` (+0.5 s): with `QueryTimeout`, a psycopg2 error for SQL errors,
    or `DatabaseUnavailable` when its connection died. Calls made with `retry_idempotent=True` are
    run once more (on a fresh connection, within the same deadline) when their connection dies.
    """

    log = Logger()

    def __init__(
        self,
        dsn: str,
        *,
        reactor: Reactor,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        query_timeout: float = 10.0,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 5.0,
        max_waiting: int = 100,
    ) -> None:
        if pool_size < 1 or connect_timeout <= 0 or query_timeout <= 0 or reconnect_delay <= 0 or max_waiting < 0:
            raise ValueError("pool_size must be at least 1, timeouts and delays positive, max_waiting not negative")
        self.redacted_dsn = redact_dsn(dsn)
        self._secrets = dsn_secrets(dsn)
        self._params = libpq_params(dsn)
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._max_waiting = max_waiting
        policy = backoff_policy(reconnect_delay, max_reconnect_delay, jitter=_RECONNECT_JITTER)
        self._slots = [_Slot(Backoff(policy)) for _ in range(pool_size)]
        self._idle: list[_Slot] = []
        self._waiting: deque[_Operation] = deque()
        self._connected_waiters: list[Deferred[None]] = []
        self._attempt_waiters: list[Deferred[None]] = []
        self._drained: Deferred[None] | None = None
        # Connection trouble, from the first failure until a connection opens again.
        self._trouble = FailureEpisode(reactor, repeat_every=_LOG_REPEAT_INTERVAL)
        #: Why a connection last failed to open or was lost (password-free); None once one is up again.
        self.last_error: str | None = None

    # -- state, for readiness probes and metrics

    @property
    def connections_up(self) -> int:
        """How many pooled connections are open right now."""
        return sum(slot.conn is not None for slot in self._slots)

    @property
    def connected(self) -> bool:
        """Whether at least one connection is up (calls are accepted)."""
        return self.connections_up > 0

    @property
    def waiting(self) -> int:
        """How many calls are queued for a free connection."""
        return len(self._waiting)

    def when_connected(self) -> Deferred[None]:
        """A Deferred firing once at least one connection is up (at once if one is); cancellable."""
        if self.connected:
            return succeed(None)
        if not self.running:
            return fail(DatabaseUnavailable("database pool is not running"))
        waiter: Deferred[None] = Deferred(self._connected_waiters.remove)
        self._connected_waiters.append(waiter)
        return waiter

    def when_attempted(self) -> Deferred[None]:
        """
        A Deferred firing once a connection is up or the next connection attempt has failed (at once
        if one is up); cancellable. Readiness uses it so its first probe reports the real reason.
        """
        if self.connected:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._attempt_waiters.remove)
        self._attempt_waiters.append(waiter)
        return waiter

    def _settle_attempt_waiters(self) -> None:
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- the API

    def run_query(
        self, sql: str, params: Any = None, *, retry_idempotent: bool = False
    ) -> Deferred[list[tuple[Any, ...]]]:
        """Run one statement and fire with all its rows."""
        return self._submit(lambda conn: conn.runQuery(sql, params), retry_idempotent)

    def run_operation(self, sql: str, params: Any = None, *, retry_idempotent: bool = False) -> Deferred[None]:
        """Run one statement and fire with None."""
        return self._submit(lambda conn: conn.runOperation(sql, params), retry_idempotent)

    def run_interaction(
        self, fn: Callable[..., Any], /, *args: Any, retry_idempotent: bool = False, **kw: Any
    ) -> Deferred[Any]:
        """
        Run `fn(cursor, *args, **kw)` in a transaction and fire with its result.

        `cursor` is a txpostgres Cursor (`execute` returns a Deferred; `fetchall` etc. are plain).
        `fn` may return a value, a Deferred or a coroutine. The transaction commits when `fn`
        succeeds and rolls back when it fails.
        """
        return self._submit(lambda conn: conn.runInteraction(_interaction, fn, args, kw), retry_idempotent)

    def ping(self) -> Deferred[float]:
        """Run `SELECT 1` and fire with the round trip in milliseconds; fail like any other call."""
        started = self._reactor.seconds()
        return self.run_query("SELECT 1").addCallback(lambda _: (self._reactor.seconds() - started) * 1000.0)

    # -- the Service

    def startService(self) -> None:
        """Start opening every connection in the background and return at once."""
        super().startService()
        self._drained = None
        for slot in self._slots:
            if slot.conn is None and slot.attempt is None and slot.timer is None:
                self._attempt(slot)

    def stopService(self) -> Deferred[None]:
        """
        Refuse new calls, fail queued ones, stop reconnecting and close every connection.

        Fires once calls already running have settled (each is bounded by the query timeout).
        """
        super().stopService()
        self._fail_waiting(DatabaseUnavailable("database pool stopped"))
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.errback(DatabaseUnavailable("database pool stopped"))
        for slot in self._slots:
            self._cancel_timer(slot)
            if slot.opening is not None:
                slot.opening.close()
            elif slot.attempt is not None:
                slot.attempt.cancel()
            if slot.conn is not None and slot.op is None:
                self._close(slot)
        if any(slot.op is not None for slot in self._slots):
            self._drained = Deferred()
            return self._drained
        return succeed(None)

    # -- connecting

    def _attempt(self, slot: _Slot) -> None:
        slot.timer = self._reactor.callLater(self._connect_timeout, self._abandon_attempt, slot)
        slot.attempt = Deferred.fromCoroutine(self._open(slot))
        slot.attempt.addCallbacks(self._opened, self._open_failed, callbackArgs=(slot,), errbackArgs=(slot,))

    async def _open(self, slot: _Slot) -> _Connection:
        params = await with_hostaddr(self._reactor, self._params)
        conn = slot.opening = _Connection(self._reactor, partial(self._connection_lost, slot))
        await conn.connect(**params)
        await conn.runOperation("SET statement_timeout = %s", (max(1, round(self._query_timeout * 1000)),))
        return conn

    def _abandon_attempt(self, slot: _Slot) -> None:
        slot.timer = None  # tells _open_failed that the deadline passed
        if slot.opening is not None:
            slot.opening.close()
        elif slot.attempt is not None:
            slot.attempt.cancel()

    def _opened(self, conn: _Connection, slot: _Slot) -> None:
        self._cancel_timer(slot)
        slot.attempt = slot.opening = None
        slot.backoff.succeeded()
        if not self.running:
            conn.close()
            return
        first = not self.connected
        slot.conn = conn
        self._release(slot)
        if first:
            # Trouble ends when the pool has a connection again; a connection lost and reopened
            # while others stay up does not end it, so a flapping connection logs once a minute.
            connected = "database connected: {dsn}"
            if not self._trouble.recovered(self.log, connected, dsn=self.redacted_dsn):
                self.log.info(connected, dsn=self.redacted_dsn)
            self.last_error = None
            waiters, self._connected_waiters = self._connected_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._settle_attempt_waiters()

    def _open_failed(self, failure: Failure, slot: _Slot) -> None:
        timed_out = slot.timer is None
        self._cancel_timer(slot)
        if slot.opening is not None:
            slot.opening.close()
        slot.attempt = slot.opening = None
        if not self.running:
            return
        slot.timer = self._reactor.callLater(slot.backoff.failed(), self._retry, slot)
        self.last_error = f"no answer within {self._connect_timeout:g}s" if timed_out else self._describe(failure)
        if not self.connected:
            self._fail_waiting(self._unavailable())
        self._warn("database connection failed: {error}", self.last_error)
        self._settle_attempt_waiters()

    def _retry(self, slot: _Slot) -> None:
        slot.timer = None
        self._attempt(slot)

    def _connection_lost(self, slot: _Slot, conn: _Connection, reason: Failure) -> None:
        if slot.conn is conn:  # not a connection we closed ourselves
            self._drop(slot, "database connection lost: {error}", self._describe(reason))

    def _drop(self, slot: _Slot, message: str, reason: str) -> None:
        """Close `slot`'s connection (logging `message`), reopen it, and deal with its call."""
        op, slot.op = slot.op, None
        self._close(slot)
        if op is not None:
            op.slot = None
        if self.running:
            slot.timer = self._reactor.callLater(0, self._retry, slot)
            self.last_error = reason
        if op is not None:
            if op.retry and not op.retried and self.running:
                op.retried = True
                self._waiting.appendleft(op)
            else:
                self._settle(op, Failure(DatabaseUnavailable(f"database connection lost: {reason}")))
        if not self.connected:
            self._fail_waiting(self._unavailable(), spare_retries=True)
        self._dispatch()
        self._check_drained()
        if self.running:
            self._warn(message, reason)

    def _close(self, slot: _Slot) -> None:
        conn, slot.conn = slot.conn, None
        if slot in self._idle:
            self._idle.remove(slot)
        if conn is not None:
            conn.close()  # may re-enter through _connection_lost and _finished; both see it is gone

    # -- running calls

    def _submit(self, work: Callable[[Connection], Deferred[T]], retry: bool) -> Deferred[T]:
        if not self.running:
            return fail(DatabaseUnavailable("database pool is not running"))
        if not self.connected:
            return fail(self._unavailable())
        if not self._idle and len(self._waiting) >= self._max_waiting:
            return fail(DatabaseUnavailable(f"database pool saturated ({len(self._waiting)} calls waiting)"))
        op = _Operation(work, retry, Deferred(lambda _: self._abort(op, None)))
        timeout = QueryTimeout(f"database call exceeded {self._query_timeout:g}s")
        op.deadline = self._reactor.callLater(self._query_timeout + _CLIENT_GRACE, self._abort, op, timeout)
        self._waiting.append(op)
        self._dispatch()
        return op.result

    def _dispatch(self) -> None:
        while self._waiting and self._idle:
            self._start(self._waiting.popleft(), self._idle.pop())

    def _start(self, op: _Operation, slot: _Slot) -> None:
        conn = slot.conn
        assert conn is not None
        op.slot, slot.op = slot, op
        maybeDeferred(op.work, conn).addBoth(self._finished, op, conn)

    def _finished(self, result: Any, op: _Operation, conn: _Connection) -> None:
        slot = op.slot
        if slot is None or slot.op is not op or slot.conn is not conn:
            return None  # abandoned (deadline, caller cancelled, connection dropped): nobody waits
        if isinstance(result, Failure) and _is_dead(conn, result):
            self._drop(slot, "database connection lost: {error}", self._describe(result))
            return None
        op.slot = slot.op = None
        self._release(slot)
        self._settle(op, result)
        return None

    def _release(self, slot: _Slot) -> None:
        """Hand a free connection to the next queued call, or keep it idle."""
        if not self.running:
            self._close(slot)
            self._check_drained()
        elif self._waiting:
            self._start(self._waiting.popleft(), slot)
        else:
            self._idle.append(slot)

    def _abort(self, op: _Operation, error: Exception | None) -> None:
        """Give up on a call (its deadline passed, or `error` is None: its caller cancelled it)."""
        if op.deadline is not None and op.deadline.active():
            op.deadline.cancel()
        slot = op.slot
        if slot is not None:
            op.slot = slot.op = None
            reason = "no answer before the call's deadline" if error is not None else "its call was cancelled"
            self._drop(slot, "closing a database connection: {error}", reason)
        elif op in self._waiting:
            self._waiting.remove(op)
        if error is not None:
            op.result.errback(error)

    def _settle(self, op: _Operation, result: Any) -> None:
        if op.deadline is not None and op.deadline.active():
            op.deadline.cancel()
        if op.result.called:
            return
        if isinstance(result, Failure):
            if result.check(CancelledError):  # txpostgres' form of the server's statement_timeout
                result = Failure(QueryTimeout(f"database call exceeded {self._query_timeout:g}s"))
            op.result.errback(result)
        else:
            op.result.callback(result)

    def _fail_waiting(self, error: DatabaseError, spare_retries: bool = False) -> None:
        """Fail queued calls (except retries waiting for a reconnection, if `spare_retries`)."""
        queued, self._waiting = self._waiting, deque()
        for op in queued:
            if spare_retries and op.retried:
                self._waiting.append(op)
            else:
                self._settle(op, Failure(error))

    def _check_drained(self) -> None:
        if self._drained is not None and all(slot.op is None and slot.conn is None for slot in self._slots):
            drained, self._drained = self._drained, None
            drained.callback(None)

    # -- helpers

    def _cancel_timer(self, slot: _Slot) -> None:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None

    def _unavailable(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"database unavailable: {self.last_error or 'not connected yet'}")

    def _describe(self, failure: Failure) -> str:
        return describe(failure, self._secrets)

    def _warn(self, message: str, error: str) -> None:
        """Log a connection failure, but an identical one at most once a minute (with a count of those held)."""
        self._trouble.failed(self.log, message, key=(message, error), error=error, dsn=self.redacted_dsn)
