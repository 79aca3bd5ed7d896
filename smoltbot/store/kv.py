"""
The gateway's key-value store: short-TTL caches in Redis, or in process memory without it.

This module owns the `KVStore` interface, its two implementations (`RedisKV`, `MemoryKV`),
`make_kv` that picks one from `REDIS_URL`, and `parse_redis_url`. Every store is fail-open:
reads and writes never raise; a failed read looks like a miss (reference §8.3). Each call is
counted in `gateway_cache_operations_total{operation,result}`.

`txredisapi` installs the global reactor when imported, so it is imported only when a
`RedisKV` starts; importing this module has no side effects.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smoltbot.metrics import Metrics
from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.errors import describe

if TYPE_CHECKING:
    from txredisapi import BaseRedisProtocol, RedisFactory

_T = TypeVar("_T")
_Keys = list[str]

# A hung connection is dropped (and re-established) after this many calls in a row time out.
_TIMEOUTS_BEFORE_RECONNECT = 3


class KVStore(Service, ABC):
    """
    A fail-open key-value store: every method returns a Deferred that never fails, except
    `ping`, which fails when the store does not answer (for the readiness probe). `get_json`
    counts as a `get`. Only a programming error (bad `put` arguments) raises, at once.

    Run it as a service (`setServiceParent`); `mode` is "redis" or "memory".
    """

    mode: str

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    @abstractmethod
    def get(self, key: str) -> Deferred[str | None]:
        """Return the value stored at `key`, or None when absent, expired or unreachable."""

    def get_json(self, key: str) -> Deferred[object | None]:
        """Return the JSON value stored at `key`, or None when absent or not valid JSON."""
        return self.get(key).addCallback(_loads_or_none)

    @abstractmethod
    def put(self, key: str, value: str, *, ttl: float | None = None, expiration: float | None = None) -> Deferred[None]:
        """
        Store `value` at `key`, for `ttl` seconds or until the unix time `expiration` (at least
        one second from now), or for ever when neither is given.
        """

    @abstractmethod
    def delete(self, key: str) -> Deferred[None]:
        """Remove `key` if present."""

    @abstractmethod
    def list(self, prefix: str, limit: int = 1000) -> Deferred[_Keys]:
        """Return up to `limit` live keys starting with `prefix`, in no particular order."""

    @abstractmethod
    def ping(self, timeout: float = 1.0) -> Deferred[float]:
        """Check the store answers; fire with the latency in milliseconds, or fail."""

    def _count(self, operation: str, result: str) -> None:
        self._metrics.cache_operations.labels(operation=operation, result=result).inc()


def _loads_or_none(text: str | None) -> object | None:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _ttl_seconds(ttl: float | None, expiration: float | None, now: float) -> float | None:
    """Seconds a value should live for `put`'s arguments; None means for ever."""
    if ttl is not None and expiration is not None:
        raise ValueError("give ttl or expiration, not both")
    if ttl is not None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        return ttl
    if expiration is not None:
        return max(1.0, expiration - now)
    return None


class MemoryKV(KVStore):
    """
    A store in this process's memory, for a single-process gateway without Redis.

    Expired entries are dropped when read or listed; past `max_entries` the oldest written
    entry is evicted.
    """

    mode = "memory"
    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics, max_entries: int = 10_000) -> None:
        super().__init__(metrics)
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[str, float | None]] = {}

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= self._clock.seconds():
            del self._entries[key]
            return None
        return value

    def get(self, key: str) -> Deferred[str | None]:
        value = self._live(key)
        self._count("get", "miss" if value is None else "hit")
        return succeed(value)

    def put(self, key: str, value: str, *, ttl: float | None = None, expiration: float | None = None) -> Deferred[None]:
        now = self._clock.seconds()
        seconds = _ttl_seconds(ttl, expiration, now)
        self._entries.pop(key, None)
        self._entries[key] = (value, None if seconds is None else now + seconds)
        while len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._count("put", "ok")
        return succeed(None)

    def delete(self, key: str) -> Deferred[None]:
        self._entries.pop(key, None)
        self._count("delete", "ok")
        return succeed(None)

    def list(self, prefix: str, limit: int = 1000) -> Deferred[_Keys]:
        keys = [key for key in list(self._entries) if key.startswith(prefix) and self._live(key) is not None]
        self._count("list", "ok")
        return succeed(keys[:limit])

    def ping(self, timeout: float = 1.0) -> Deferred[float]:
        return succeed(0.0)


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to reach Redis, parsed from a `redis://` or `rediss://` URL."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def __str__(self) -> str:
        """The URL without credentials, safe to log."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse `redis[s]://[[user]:password@]host[:port][/db]`; raise ValueError if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("REDIS_URL must start with redis:// or rediss://")
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise ValueError("REDIS_URL has an invalid port or database number") from None
    if not parts.hostname:
        raise ValueError("REDIS_URL has no host")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


@implementer(IStreamClientEndpoint)
class _RememberingEndpoint:
    """An endpoint that keeps the protocol of its latest connection, so it can be aborted."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.latest: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._endpoint.connect(factory).addCallback(self._remember)

    def _remember(self, protocol: IProtocol) -> IProtocol:
        self.latest = protocol
        return protocol


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisKV(KVStore):
    """
    A store in Redis under a key prefix, over one connection that reconnects by itself.

    Calls fail fast while no connection is up and time out after `op_timeout` seconds;
    failures are counted and swallowed, and logged only when the store's state changes.
    """

    mode = "redis"
    log = Logger()

    def __init__(
        self,
        url: str,
        *,
        reactor: Any,
        metrics: Metrics,
        prefix: str = "kv:",
        op_timeout: float = 0.5,
        connect_timeout: float = 5.0,
    ) -> None:
        """`reactor` provides IReactorTCP and IReactorTime; `url` is validated here."""
        super().__init__(metrics)
        self.address = parse_redis_url(url)
        self._reactor = reactor
        self._prefix = prefix
        self._op_timeout = op_timeout
        self._connect_timeout = connect_timeout
        self._factory: RedisFactory | None = None
        self._endpoint = _RememberingEndpoint(self._plain_or_tls_endpoint())
        self._connection: BaseRedisProtocol | None = None
        self._waiters: list[Deferred[None]] = []
        self._timeouts_in_a_row = 0
        # Failed calls, from the first until one succeeds: one warning, then only a count.
        self._failing_calls = FailureEpisode(reactor)

    def startService(self) -> None:
        """Start connecting in the background."""
        import txredisapi

        super().startService()
        address = self.address
        self._factory = txredisapi.RedisFactory(
            str(address),
            address.db or None,  # a new connection is on database 0 already
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            convertNumbers=False,
        )
        self._factory.startConnecting(self._endpoint)
        self._await_connection()

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting and drop the connection; fire when the socket is closed."""
        super().stopService()
        if self._factory is None:
            return succeed(None)
        # Aborted, not closed: a TLS close waits for a handshake that may never finish.
        latest = self._endpoint.latest
        if latest is not None and latest.connected:
            latest.transport.abortConnection()
        return self._factory.disconnect().addCallback(lambda _: None)

    def _plain_or_tls_endpoint(self) -> IStreamClientEndpoint:
        address = self.address
        endpoint = HostnameEndpoint(self._reactor, address.host, address.port, timeout=self._connect_timeout)
        if address.tls:
            return wrapClientTLS(optionsForClientTLS(address.host), endpoint)
        return endpoint

    def _await_connection(self) -> None:
        assert self._factory is not None
        self._factory.getConnection(peek=True).addCallbacks(self._connected, lambda _: None)

    def _connected(self, connection: BaseRedisProtocol) -> None:
        self.log.info("Connected to Redis at {address}", address=str(self.address))
        self._connection = connection
        self._timeouts_in_a_row = 0
        connection.whenDisconnected().addCallback(self._disconnected)
        self._waiters, waiters = [], self._waiters
        for waiter in waiters:
            waiter.callback(None)

    def _disconnected(self, _: object) -> None:
        self._connection = None
        if self.running:
            self.log.warn("Lost the Redis connection to {address}; reconnecting", address=str(self.address))
            self._await_connection()

    def when_connected(self) -> Deferred[None]:
        """Fire once a connection is up (at once if one is); cancel it to stop waiting."""
        if self._connection is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def _send(self, *command: str | int) -> Deferred[Any]:
        """Send one command on the live connection, or fail at once when there is none."""
        if self._connection is None:
            import txredisapi

            return fail(txredisapi.ConnectionError("not connected to Redis"))
        return maybeDeferred(self._connection.execute_command, *command)

    def _bounded(self, work: Deferred[_T], timeout: float) -> Deferred[_T]:
        """Time `work` out after `timeout`; drop a connection that keeps timing out."""

        def settled(result: _T | Failure) -> _T | Failure:
            if isinstance(result, Failure) and result.check(TimeoutError):
                self._timeouts_in_a_row += 1
                if self._timeouts_in_a_row >= _TIMEOUTS_BEFORE_RECONNECT and self._connection is not None:
                    # Fail fast from now on; txredisapi reconnects once the socket is gone.
                    hung, self._connection, self._timeouts_in_a_row = self._connection, None, 0
                    hung.transport.abortConnection()
            else:
                self._timeouts_in_a_row = 0
            return result

        return work.addTimeout(timeout, self._reactor).addBoth(settled)

    def _run(self, operation: str, work: Deferred[_T], classify: Callable[[_T], str], fallback: _T) -> Deferred[_T]:
        """Bound, count and log one operation; its failure becomes `fallback`."""

        def succeeded(result: _T) -> _T:
            self._count(operation, classify(result))
            self._failing_calls.recovered(self.log, "Redis calls succeed again after {failures} failed")
            return result

        def failed(failure: Failure) -> _T:
            result = "timeout" if failure.check(TimeoutError) else "error"
            self._count(operation, result)
            self._failing_calls.failed(
                self.log,
                "Redis {operation} failed ({result}: {error}); failures are counted, not logged, until a call succeeds",
                operation=operation,
                result=result,
                error=describe(failure, [self.address.password or ""]),
            )
            return fallback

        return self._bounded(work, self._op_timeout).addCallbacks(succeeded, failed)

    def get(self, key: str) -> Deferred[str | None]:
        work = self._send("GET", self._prefix + key)
        return self._run("get", work, lambda value: "miss" if value is None else "hit", None)

    def put(self, key: str, value: str, *, ttl: float | None = None, expiration: float | None = None) -> Deferred[None]:
        seconds = _ttl_seconds(ttl, expiration, self._reactor.seconds())
        if seconds is None:
            work = self._send("SET", self._prefix + key, value)
        else:
            work = self._send("SETEX", self._prefix + key, math.ceil(seconds), value)
        return self._run("put", work.addCallback(lambda _: None), lambda _: "ok", None)

    def delete(self, key: str) -> Deferred[None]:
        work = self._send("DEL", self._prefix + key)
        return self._run("delete", work.addCallback(lambda _: None), lambda _: "ok", None)

    def list(self, prefix: str, limit: int = 1000) -> Deferred[_Keys]:
        return self._run("list", Deferred.fromCoroutine(self._scan(prefix, limit)), lambda _: "ok", [])

    async def _scan(self, prefix: str, limit: int) -> _Keys:
        pattern = _glob_escape(self._prefix + prefix) + "*"
        keys: _Keys = []
        cursor = "0"
        while True:
            cursor, batch = await self._send("SCAN", cursor, "MATCH", pattern, "COUNT", max(limit, 100))
            keys.extend(name[len(self._prefix) :] for name in batch)
            if cursor == "0" or len(keys) >= limit:
                return keys[:limit]

    def ping(self, timeout: float = 1.0) -> Deferred[float]:
        """
        Send PING once a connection is up; fire with its round trip in milliseconds, or fail
        (TimeoutError after `timeout` seconds, waiting for a connection included).
        """

        async def round_trip() -> float:
            await self.when_connected()
            started = self._reactor.seconds()
            reply = await self._send("PING")
            if reply != "PONG":
                raise ValueError(f"unexpected PING reply {reply!r}")
            return (self._reactor.seconds() - started) * 1000

        return self._bounded(Deferred.fromCoroutine(round_trip()), timeout)


def make_kv(
    redis_url: str | None,  # None or "" means unset
    *,
    reactor: Any,
    metrics: Metrics,
    prefix: str = "kv:",
    op_timeout: float = 0.5,
    connect_timeout: float = 5.0,
) -> KVStore:
    """
    Build the store `REDIS_URL` asks for: Redis when set, otherwise an in-memory store (and a
    warning, since it is neither shared between processes nor kept across restarts).
    """
    if not redis_url:
        MemoryKV.log.warn("REDIS_URL is not set: using an in-memory KV store (per process, not shared)")
        return MemoryKV(reactor, metrics)
    return RedisKV(
        redis_url, reactor=reactor, metrics=metrics, prefix=prefix, op_timeout=op_timeout, connect_timeout=connect_timeout
    )
