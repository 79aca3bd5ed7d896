"""
The PostgreSQL connection pool: the one way smoltbot talks to its database.

`Database` is a Service keeping `pool_size` txpostgres connections, each with a reconnect loop of
its own, so that the daemon neither hangs nor crashes because of the database (DESIGN §2):

- connecting happens in the background and survives a database that is down, hung or refusing
  us; host names are resolved through the reactor's resolver and handed to libpq as `hostaddr`
  (libpq never does blocking DNS); the connect timeout is ours (libpq ignores `connect_timeout`
  in async mode); failed attempts back off exponentially up to a few seconds;
- a dead connection (reset, server shutdown, failed rollback) is closed and reopened at once;
- every call fails fast with `DatabaseUnavailable` while no connection is up, and is bounded in
  time: the server cancels a statement at `statement_timeout` (= query_timeout), and if no answer
  has come `_CLIENT_GRACE` seconds later the connection is presumed hung and closed. txpostgres'
  `cancel()` is not used: it calls libpq's PQcancel, which connects and waits for the server
  synchronously with the GIL held, so against a hung server it would freeze the reactor;
- no message or log line carries the DSN's password (`redact_dsn`).
"""

from __future__ import annotations

import inspect
import ipaddress
import random
import re
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, TypeVar
from urllib.parse import unquote

import psycopg2
from psycopg2.extensions import parse_dsn
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IAddress, IDelayedCall, IHostResolution, IResolutionReceiver
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.txpostgres import Connection, Cursor, RollbackFailed, _PollingMixin
from zope.interface import implementer

T = TypeVar("T")

#: The reactor must provide IReactorTime, IReactorFDSet and IReactorPluggableNameResolver.
Reactor = Any

_CLIENT_GRACE = 0.5  # seconds past query_timeout before a silent connection is closed
_LOG_REPEAT_INTERVAL = 60.0  # seconds during which an identical failure line is not repeated

# Where a DSN keeps a password (or an sslpassword): URL userinfo (up to the last "@", to be safe
# when the password holds an unescaped "@"), a URL query parameter, or a key=value pair (maybe quoted).
_SECRET_PATTERNS = (
    re.compile(r"^[a-z][a-z0-9+.-]*://[^:@/?#]*:(?P<secret>.*)@", re.IGNORECASE | re.DOTALL),
    re.compile(r"[?&](?:ssl)?password=(?P<secret>[^&#]*)", re.IGNORECASE),
    re.compile(r"(?:^|\s)(?:ssl)?password\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*(?:'|$)|\S*)", re.IGNORECASE),
)


class DatabaseError(Exception):
    """Base of the errors the pool raises itself; SQL errors from the server pass through as psycopg2 errors."""


class DatabaseUnavailable(DatabaseError):
    """No connection is up, the pool is stopped or saturated, or the connection died during the call."""


class QueryTimeout(DatabaseError):
    """The call did not finish within the query timeout; whether it took effect is unknown."""


def redact_dsn(dsn: str) -> str:
    """Return `dsn` (URL or key=value form) with any password replaced by `***`."""
    for pattern in _SECRET_PATTERNS:
        dsn = pattern.sub(_mask, dsn)
    return dsn


def describe_error(error: BaseException | Failure) -> str:
    """The first line of an error's message (its class name when it has none), for one-line reports."""
    value = error.value if isinstance(error, Failure) else error
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return lines[0] if lines else type(value).__name__


async def wait_connected(db: Database, reactor: Reactor, timeout: float) -> None:
    """Wait for `db`'s first connection; after `timeout` seconds raise DatabaseUnavailable saying why there is none."""
    try:
        await db.when_connected().addTimeout(timeout, reactor)
    except DeferredTimeout:
        reason = db.last_error or f"no connection within {timeout:g}s"
        raise DatabaseUnavailable(f"cannot reach the database {db.redacted_dsn}: {reason}") from None


def _mask(match: re.Match[str]) -> str:
    start, end = match.start("secret") - match.start(), match.end("secret") - match.start()
    return match.group(0)[:start] + "***" + match.group(0)[end:]


def _secrets(dsn: str) -> list[str]:
    """Every spelling of the DSN's password(s) that could turn up in a message."""
    found = {m.group("secret") for pattern in _SECRET_PATTERNS for m in pattern.finditer(dsn)}
    found |= {unquote(s) for s in found} | {s.strip("'") for s in found}
    try:
        params = parse_dsn(dsn)
    except psycopg2.Error:
        params = {}
    found |= {params.get("password", ""), params.get("sslpassword", "")}
    return sorted((s for s in found if s), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


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


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses a host name resolves to and fires `result` with them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.result: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if host and host not in self.addresses:
            self.addresses.append(host)

    def resolutionComplete(self) -> None:
        if self.result.called:  # cancelled by a connect timeout
            return
        if self.addresses:
            self.result.callback(self.addresses)
        else:
            self.result.errback(DNSLookupError(f"no address for {self.name}"))


async def _with_hostaddr(reactor: Reactor, params: dict[str, str]) -> dict[str, str]:
    """Resolve every host name in `params` and add `hostaddr`, keeping `host` for TLS checks."""
    if "hostaddr" in params or not params.get("host"):
        return params
    hosts = params["host"].split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return params  # libpq reports the mismatch
    entries: list[tuple[str, str, str]] = []
    for host, port in zip(hosts, ports):
        for address in await _addresses(reactor, host):
            entries.append((host, address, port))
    if not any(address for _, address, _ in entries):
        return params  # Unix sockets only
    hosts, addresses, ports = (list(column) for column in zip(*entries))
    params = dict(params, host=",".join(hosts), hostaddr=",".join(addresses))
    if any(ports):
        params["port"] = ",".join(ports)
    return params


def _addresses(reactor: Reactor, host: str) -> Deferred[list[str]]:
    """The addresses to try for one `host` entry ("" for a socket directory: libpq uses `host`)."""
    if not host or host.startswith(("/", "@")):
        return succeed([""])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        receiver = _Addresses(host)
        reactor.nameResolver.resolveHostName(receiver, host)
        return receiver.result
    return succeed([host])


def _interaction(cursor: Cursor, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """Call an interaction function; a coroutine it returns is run as a Deferred."""
    result = fn(cursor, *args, **kw)
    return Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result


@dataclass(eq=False)
class _Slot:
    """One place in the pool: its connection when up, the call running on it, its pending attempt."""

    conn: _Connection | None = None
    op: _Operation | None = None
    attempt: Deferred[_Connection] | None = None  # a connection attempt in progress
    opening: _Connection | None = None  # the connection that attempt is opening
    timer: IDelayedCall | None = None  # the next attempt, or the running attempt's deadline
    failures: int = 0


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
        self._secrets = _secrets(dsn)
        try:
            self._params = parse_dsn(dsn)
        except psycopg2.Error as error:
            reason = _scrub(describe_error(error), self._secrets)
            raise ValueError(f"invalid database URL {self.redacted_dsn}: {reason}") from None
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max(max_reconnect_delay, reconnect_delay)
        self._max_waiting = max_waiting
        self._slots = [_Slot() for _ in range(pool_size)]
        self._idle: list[_Slot] = []
        self._waiting: deque[_Operation] = deque()
        self._connected_waiters: list[Deferred[None]] = []
        self._attempt_waiters: list[Deferred[None]] = []
        self._drained: Deferred[None] | None = None
        self._last_warning: tuple[str, str] | None = None
        self._last_warning_at = 0.0
        self._suppressed = 0
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
        params = await _with_hostaddr(self._reactor, self._params)
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
        slot.failures = 0
        if not self.running:
            conn.close()
            return
        first = not self.connected
        slot.conn = conn
        self._release(slot)
        if first:
            self.log.info("database connected: {dsn}", dsn=self.redacted_dsn)
            self._last_warning = self.last_error = None
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
        slot.failures += 1
        backoff = self._reconnect_delay * 2 ** min(slot.failures - 1, 16) * random.uniform(0.8, 1.2)
        slot.timer = self._reactor.callLater(min(backoff, self._max_reconnect_delay), self._retry, slot)
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
        return _scrub(describe_error(failure), self._secrets)

    def _warn(self, message: str, error: str) -> None:
        """Log a warning, but an identical one at most once a minute (with a count of those skipped)."""
        now = self._reactor.seconds()
        if self._last_warning == (message, error) and now - self._last_warning_at < _LOG_REPEAT_INTERVAL:
            self._suppressed += 1
            return
        self.log.warn(message, error=error, dsn=self.redacted_dsn, suppressed=self._suppressed)
        self._last_warning, self._last_warning_at, self._suppressed = (message, error), now, 0
