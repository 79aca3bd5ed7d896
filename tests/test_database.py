"""
Tests for smoltbot.store.pool against the real PostgreSQL, with outages staged by a FaultProxy.

Nothing sleeps: tests wait on Deferreds that real I/O fires (a connection made, a log line
emitted, a query answered), with short injected timeouts and reconnect delays.
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from smoltbot.store.dsn import dsn_secrets, is_postgres_dsn, libpq_params, redact_dsn
from smoltbot.store.pool import Database, DatabaseUnavailable, QueryTimeout
from tests.faultproxy import FaultProxy
from tests.support import new_database

MARKER = "Pw-Marker-7731"  # the password in every DSN below; it must never show up anywhere


def within(d: Deferred[Any], seconds: float = 10.0) -> Deferred[Any]:
    """Fail `d` after `seconds` instead of letting a broken test hang."""
    return d.addTimeout(seconds, reactor)


@implementer(ILogObserver)
class LogWatcher:
    """Collects the pool's log lines and fires Deferreds when an expected one is emitted."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._waiting: list[tuple[str, Deferred[str]]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != "smoltbot.store.pool.Database":
            return
        line = f"{formatEvent(event)} {event.get('dsn', '')}"
        self.lines.append(line)
        for entry in [entry for entry in self._waiting if entry[0] in line]:
            self._waiting.remove(entry)
            entry[1].callback(line)

    def wait_for(self, text: str) -> Deferred[str]:
        """Fire with the first line (already logged or still to come) containing `text`."""
        for line in self.lines:
            if text in line:
                return within(Deferred.fromCoroutine(_value(line)))
        d: Deferred[str] = Deferred()
        self._waiting.append((text, d))
        return within(d)


async def _value(value: str) -> str:
    return value


class RedactionTests(SynchronousTestCase):
    def test_redact_dsn(self) -> None:
        """Every way a DSN can carry a password comes out with `***` instead, the rest intact."""
        cases = {
            "postgresql://u:pw@db:5432/app?sslmode=require": "postgresql://u:***@db:5432/app?sslmode=require",
            "postgres://u:p@ss@db/app": "postgres://u:***@db/app",
            "postgresql://u@db/app?sslmode=require&password=pw": "postgresql://u@db/app?sslmode=require&password=***",
            "host=db password=pw dbname=app": "host=db password=*** dbname=app",
            "host=db password = 'p w\\' x' dbname=app": "host=db password = *** dbname=app",
            "postgresql://u@db/app?sslpassword=pw": "postgresql://u@db/app?sslpassword=***",
            "host=db sslpassword=pw": "host=db sslpassword=***",
            "postgresql://u@db/app": "postgresql://u@db/app",
            "host=db dbname=app": "host=db dbname=app",
        }
        for dsn, expected in cases.items():
            self.assertEqual(redact_dsn(dsn), expected)

    def test_secrets_every_spelling(self) -> None:
        """dsn_secrets lists the password as written, unquoted and percent-decoded, longest first."""
        self.assertEqual(dsn_secrets("postgresql://u:p%40ss@db/app"), ["p%40ss", "p@ss"])
        self.assertEqual(dsn_secrets("host=db password='p w' dbname=app"), ["'p w'", "p w"])
        self.assertEqual(dsn_secrets("host=db dbname=app"), [])

    def test_is_postgres_dsn(self) -> None:
        """PostgreSQL URLs with a host and libpq key=value strings are DSNs; other URLs and free text are not."""
        cases = {
            "postgresql://u:pw@db:5432/app": True,
            "postgres://u@h/d": True,
            "postgresql:///app?host=/var/run/postgresql": True,
            "host=127.0.0.1 dbname=smoltbot user=postgres": True,
            "mysql://root:pw@db/app": False,
            "https://x.supabase.co": False,
            "postgresql://db:notaport/app": False,
            "postgresql:///app": False,
            "just some words": False,
            "host=db stray": False,
        }
        for raw, expected in cases.items():
            self.assertEqual(is_postgres_dsn(raw), expected, raw)

    def test_libpq_params(self) -> None:
        """libpq_params gives libpq's reading of a DSN, and refuses an unparsable one without quoting its password."""
        self.assertEqual(libpq_params("postgresql://u@db:6432/app")["port"], "6432")
        error = self.assertRaises(ValueError, libpq_params, f"host=db password={MARKER} dbname")
        self.assertIn("invalid database URL host=db password=*** dbname", str(error))
        self.assertNotIn(MARKER, str(error))

    def test_invalid_dsn(self) -> None:
        """A DSN libpq cannot parse is rejected with a ValueError that does not quote its password."""
        for dsn in [f"postgresql://u:{MARKER}@[db/app", f"host=db password={MARKER} dbname", f"password='{MARKER}"]:
            error = self.assertRaises(ValueError, Database, dsn, reactor=reactor)
            self.assertNotIn(MARKER, str(error))
            self.assertIn("***", str(error))


class BackoffTests(SynchronousTestCase):
    def test_backoff_and_quiet_logs(self) -> None:
        """Attempts on a silent server stop at the connect timeout, back off to a cap, and log once a minute."""
        listener = socket.socket()  # completes TCP handshakes but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.addCleanup(listener.close)
        clock = MemoryReactorClock()
        dsn = f"postgresql://postgres:{MARKER}@127.0.0.1:{listener.getsockname()[1]}/x"
        db = Database(dsn, reactor=clock, pool_size=1, connect_timeout=1, reconnect_delay=1, max_reconnect_delay=4)
        events: list[dict[str, Any]] = []
        db.log = Logger(observer=events.append)
        db.startService()
        delays = []
        while clock.seconds() < 65:
            clock.advance(1)  # the attempt's deadline
            [retry] = clock.getDelayedCalls()
            delays.append(round(retry.getTime() - clock.seconds(), 6))
            clock.advance(retry.getTime() - clock.seconds())  # the next attempt starts
        self.assertTrue(0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4 and 3.2 <= delays[2] <= 4, delays)
        self.assertEqual(set(delays[3:]), {4})
        self.assertEqual([formatEvent(e) for e in events], ["database connection failed: no answer within 1s"] * 2)
        self.assertEqual(events[1]["suppressed"], len(delays) - 2)
        self.successResultOf(db.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])


class DatabaseTests(TestCase):
    """The pool against a private database, reached through a FaultProxy."""

    timeout = 30
    dbname = ""  # created by the first test to run

    def setUp(self) -> None:
        if not DatabaseTests.dbname:
            DatabaseTests.dbname = new_database().rsplit("/", 1)[1]
        self.logs = LogWatcher()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    def tearDown(self) -> None:
        for line in self.logs.lines:
            self.assertNotIn(MARKER, line)

    async def pool(self, mode: str = "relay", dbname: str | None = None, **kw: Any) -> tuple[Database, FaultProxy]:
        """A started pool (stopped at cleanup) behind a proxy in `mode`, with fast reconnects."""
        proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        proxy.mode = mode
        port = await proxy.start()
        self.addCleanup(proxy.stop)
        kw.setdefault("reconnect_delay", 0.02)
        kw.setdefault("max_reconnect_delay", 0.1)
        dsn = f"postgresql://postgres:{MARKER}@127.0.0.1:{port}/{dbname or self.dbname}"
        db = Database(dsn, reactor=reactor, **kw)
        db.startService()
        self.addCleanup(db.stopService)
        return db, proxy

    async def backend_pid(self, db: Database) -> int:
        [(pid,)] = await within(db.run_query("SELECT pg_backend_pid()"))
        return pid

    async def test_fails_fast_while_unreachable(self) -> None:
        """A pool started while the database refuses connections answers every call at once with DatabaseUnavailable."""
        db, _ = await self.pool("refuse")
        self.failureResultOf(db.run_query("SELECT 1"), DatabaseUnavailable)
        await self.logs.wait_for("database connection failed")
        error = self.failureResultOf(db.ping(), DatabaseUnavailable).value
        self.assertIn("server closed the connection", str(error))
        self.failureResultOf(db.run_interaction(lambda cursor: None), DatabaseUnavailable)
        self.assertFalse(db.connected)

    async def test_when_attempted(self) -> None:
        """when_attempted fires after a failed connection attempt, and at once while connected."""
        db, proxy = await self.pool("refuse")
        await within(db.when_attempted())
        self.assertFalse(db.connected)
        self.assertIsNotNone(db.last_error)
        proxy.mode = "relay"
        await within(db.when_connected())
        self.successResultOf(db.when_attempted())

    async def test_recovers_without_restart(self) -> None:
        """Once the database is reachable again, the same pool reconnects by itself and calls succeed."""
        db, proxy = await self.pool("refuse")
        await self.logs.wait_for("database connection failed")
        proxy.mode = "relay"
        await within(db.when_connected())
        self.assertEqual(await within(db.run_query("SELECT 1")), [(1,)])

    async def test_cut_idle_connection_replaced(self) -> None:
        """An idle connection cut by the network is noticed and replaced by a new one."""
        db, proxy = await self.pool(pool_size=1)
        await within(db.when_connected())
        before = await self.backend_pid(db)
        proxy.cut()
        await self.logs.wait_for("database connection lost")
        await within(db.when_connected())
        self.assertNotEqual(await self.backend_pid(db), before)

    async def test_cut_during_query(self) -> None:
        """A call whose connection is cut fails at once with DatabaseUnavailable, and the pool recovers."""
        db, proxy = await self.pool(pool_size=1)
        await within(db.when_connected())
        d = db.run_query("SELECT pg_sleep(5)")
        proxy.cut()
        await self.assertFailure(within(d, 2), DatabaseUnavailable)
        await within(db.when_connected())
        self.assertEqual(await within(db.run_query("SELECT 2")), [(2,)])

    async def test_idempotent_call_retried_once(self) -> None:
        """A call marked idempotent whose connection is cut runs again on the new connection."""
        db, proxy = await self.pool(pool_size=1)
        await within(db.when_connected())
        d = db.run_query("SELECT 3 FROM pg_sleep(0.1)", retry_idempotent=True)
        proxy.cut()
        self.assertEqual(await within(d), [(3,)])

    async def test_connect_timeout_on_hung_server(self) -> None:
        """A server that accepts but never answers costs each attempt no more than the connect timeout."""
        db, _ = await self.pool("hang", connect_timeout=0.2)
        await self.logs.wait_for("no answer within 0.2s")
        error = self.failureResultOf(db.run_query("SELECT 1"), DatabaseUnavailable).value
        self.assertIn("no answer within 0.2s", str(error))

    async def test_query_timeout(self) -> None:
        """A statement over the query timeout fails with QueryTimeout soon after it, and the connection stays usable."""
        db, _ = await self.pool(pool_size=1, query_timeout=0.3)
        await within(db.when_connected())
        pid = await self.backend_pid(db)
        started = reactor.seconds()
        await self.assertFailure(within(db.run_query("SELECT pg_sleep(5)")), QueryTimeout)
        self.assertLess(reactor.seconds() - started, 2)
        self.assertEqual(await self.backend_pid(db), pid)

    async def test_silent_connection_closed_at_deadline(self) -> None:
        """A call on a connection that stops answering fails with QueryTimeout, and the connection is replaced."""
        db, proxy = await self.pool(pool_size=1, query_timeout=0.2)
        await within(db.when_connected())
        pid = await self.backend_pid(db)
        for inbound in proxy.inbound:
            inbound.transport.pauseProducing()
            inbound.outbound.transport.pauseProducing()
        await self.assertFailure(within(db.run_query("SELECT 1"), 3), QueryTimeout)
        await within(db.when_connected())
        self.assertNotEqual(await self.backend_pid(db), pid)

    async def test_missing_database_until_created(self) -> None:
        """A pool pointed at a database that does not exist keeps failing, then works once it is created."""
        admin, _ = await self.pool(dbname="postgres", pool_size=1)
        await within(admin.when_connected())
        late = f"{self.dbname}_late"
        self.addCleanup(admin.run_operation, f'DROP DATABASE IF EXISTS "{late}" WITH (FORCE)')
        db, _ = await self.pool(dbname=late)
        await self.logs.wait_for("does not exist")
        error = self.failureResultOf(db.run_query("SELECT 1"), DatabaseUnavailable).value
        self.assertIn("does not exist", str(error))
        await within(admin.run_operation(f'CREATE DATABASE "{late}"'))
        await within(db.when_connected())
        self.assertEqual(await within(db.run_query("SELECT current_database()")), [(late,)])

    async def test_password_never_in_errors(self) -> None:
        """Errors and log lines about a failing connection show the DSN with its password masked."""
        db, _ = await self.pool("refuse")
        line = await self.logs.wait_for("database connection failed")
        self.assertIn(":***@127.0.0.1", line)
        error = self.failureResultOf(db.run_query("SELECT 1"), DatabaseUnavailable).value
        self.assertNotIn(MARKER, str(error))
        self.assertNotIn(MARKER, db.redacted_dsn)
        self.assertNotIn(MARKER, str(db.last_error))

    async def test_stop_cancels_reconnection(self) -> None:
        """Stopping a pool that is waiting to reconnect cancels the wait and refuses further calls."""
        db, _ = await self.pool("refuse", reconnect_delay=30)
        await self.logs.wait_for("database connection failed")
        await within(db.stopService())
        self.failureResultOf(db.run_query("SELECT 1"), DatabaseUnavailable)
        # The reactor being clean at the end of the test shows no reconnect timer was left.

    async def test_stop_waits_for_running_calls(self) -> None:
        """Stopping lets a call already running finish, then closes every connection."""
        db, _ = await self.pool(pool_size=2)
        await within(db.when_connected())
        running = db.run_query("SELECT 4 FROM pg_sleep(0.2)")
        stopped = db.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(await within(running), [(4,)])
        await within(stopped)
        self.assertEqual(db.connections_up, 0)

    async def test_interaction_commits_or_rolls_back(self) -> None:
        """An interaction commits when its function succeeds and leaves nothing behind when it raises."""
        db, _ = await self.pool()
        await within(db.when_connected())
        await within(db.run_operation("CREATE TABLE interaction_test (n int)"))

        async def insert(cursor: Any, n: int, fail: bool = False) -> int:
            await cursor.execute("INSERT INTO interaction_test VALUES (%s)", (n,))
            if fail:
                raise ValueError("changed my mind")
            return n

        self.assertEqual(await within(db.run_interaction(insert, 1)), 1)
        await self.assertFailure(within(db.run_interaction(insert, 2, fail=True)), ValueError)
        self.assertEqual(await within(db.run_query("SELECT n FROM interaction_test")), [(1,)])

    async def test_cancelled_call(self) -> None:
        """A call its caller cancels fails at once with CancelledError, and its connection is replaced."""
        db, _ = await self.pool(pool_size=1)
        await within(db.when_connected())
        pid = await self.backend_pid(db)
        d = db.run_query("SELECT pg_sleep(5)")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await within(db.when_connected())
        self.assertNotEqual(await self.backend_pid(db), pid)

    async def test_sql_error_keeps_connection(self) -> None:
        """An SQL error reaches the caller as the psycopg2 error and the connection stays in the pool."""
        db, _ = await self.pool(pool_size=1)
        await within(db.when_connected())
        pid = await self.backend_pid(db)
        await self.assertFailure(within(db.run_query("SELEC 1")), psycopg2.errors.SyntaxError)
        self.assertEqual(await self.backend_pid(db), pid)

    async def test_ping(self) -> None:
        """ping() fires with the round trip of `SELECT 1` in milliseconds."""
        db, _ = await self.pool()
        await within(db.when_connected())
        latency = await within(db.ping())
        self.assertIsInstance(latency, float)
        self.assertGreaterEqual(latency, 0.0)

    async def test_queue_is_bounded(self) -> None:
        """When every connection is busy and the queue is full, a call fails at once instead of waiting."""
        db, _ = await self.pool(pool_size=1, max_waiting=1)
        await within(db.when_connected())
        running = db.run_query("SELECT 5 FROM pg_sleep(0.1)")
        queued = db.run_query("SELECT 6")
        error = self.failureResultOf(db.run_query("SELECT 7"), DatabaseUnavailable).value
        self.assertIn("saturated", str(error))
        self.assertEqual(await within(running), [(5,)])
        self.assertEqual(await within(queued), [(6,)])

    async def test_host_name_resolved_by_reactor(self) -> None:
        """A key=value DSN naming its host by name connects (the name resolved without libpq)."""
        proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        port = await proxy.start()
        self.addCleanup(proxy.stop)
        db = Database(f"host=localhost port={port} user=postgres dbname={self.dbname}", reactor=reactor)
        db.startService()
        self.addCleanup(db.stopService)
        await within(db.when_connected())
        self.assertEqual(await within(db.run_query("SELECT 8")), [(8,)])
