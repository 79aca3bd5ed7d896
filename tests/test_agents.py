"""
Tests of the agent registry: on a fake clock with a fake database (first sighting, last_seen
batching, outages, the pending bound), and against the real PostgreSQL (racing first sightings
from two processes).
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smoltbot.records.agents import AgentRegistry
from smoltbot.store.pool import Database, DatabaseUnavailable
from smoltbot.metrics import Metrics
from tests.test_recorder import migrated_database, sample


def identity(n: int) -> tuple[str, str]:
    """(agent id, agent hash) of the n-th test key, as the proxy derives them."""
    hash16 = hashlib.sha256(f"sk-test-{n}".encode()).hexdigest()[:16]
    return "smolt-" + hash16[:8], hash16


class FakeAgentsTable:
    """Stands in for the pool: an `agents` table in a dict, and a switch to fail every call."""

    def __init__(self) -> None:
        self.failing = False
        self.rows: dict[str, dict[str, Any]] = {}
        self.statements: list[str] = []

    def run_query(self, sql, params=None, *, retry_idempotent=False):
        self.statements.append(sql.split()[0])
        if self.failing:
            return fail(DatabaseUnavailable("database unavailable: connection refused"))
        if sql.startswith("INSERT"):
            inserted = []
            for i in range(0, len(params), 4):
                agent_id, hash16, first, last = params[i : i + 4]
                if agent_id not in self.rows:
                    self.rows[agent_id] = {"hash": hash16, "first_seen": first, "last_seen": last}
                    inserted.append((agent_id,))
            return succeed(inserted)
        updated = []
        for i in range(0, len(params), 2):
            agent_id, when = params[i : i + 2]
            row = self.rows.get(agent_id)
            if row is not None and (row["last_seen"] is None or row["last_seen"] < when):
                row["last_seen"] = when
                updated.append((agent_id,))
        return succeed(updated)


class AgentRegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_760_000_000)
        self.db = FakeAgentsTable()
        self.metrics = Metrics("test")

    def start(self, **kw: Any) -> AgentRegistry:
        registry = AgentRegistry(self.db, clock=self.clock, metrics=self.metrics, flush_interval=1, touch_interval=60, **kw)
        registry.log = Logger(namespace="agents", observer=lambda event: None)
        registry.startService()
        return registry

    def test_first_sighting_inserts_once(self) -> None:
        """An agent's first request queues one insert; its next requests cost nothing until the interval passes."""
        registry = self.start()
        agent_id, hash16 = identity(1)
        for _ in range(100):
            registry.seen(agent_id, hash16, self.clock.seconds())
        self.assertEqual(self.db.statements, [])  # never on the request path
        self.clock.advance(1)
        self.assertEqual(self.db.statements, ["INSERT"])
        self.assertEqual(self.db.rows[agent_id]["hash"], hash16)
        self.assertEqual(self.db.rows[agent_id]["first_seen"], 1_760_000_000)
        self.assertEqual(sample(self.metrics, "gateway_background_tasks_total", task="agent_upsert"), 1)

    def test_last_seen_at_most_once_per_interval(self) -> None:
        """Sightings update last_seen at most once per interval, batched for all agents."""
        registry = self.start()
        agents = [identity(n) for n in range(3)]
        for second in range(0, 200):
            for agent_id, hash16 in agents:
                registry.seen(agent_id, hash16, self.clock.seconds())
            self.clock.advance(1)
        # One insert at t=1, then one batched update per interval (t=60, 120, 180).
        self.assertEqual(self.db.statements, ["INSERT", "UPDATE", "UPDATE", "UPDATE"])
        for agent_id, _ in agents:
            self.assertEqual(self.db.rows[agent_id]["last_seen"], 1_760_000_180)

    def test_existing_row_gets_last_seen(self) -> None:
        """An agent whose row exists already (another process, an earlier run) gets its last_seen updated instead."""
        agent_id, hash16 = identity(2)
        self.db.rows[agent_id] = {"hash": hash16, "first_seen": 1, "last_seen": 2}
        registry = self.start()
        registry.seen(agent_id, hash16, self.clock.seconds())
        self.clock.advance(1)
        self.assertEqual(self.db.statements, ["INSERT", "UPDATE"])
        self.assertEqual(self.db.rows[agent_id], {"hash": hash16, "first_seen": 1, "last_seen": 1_760_000_000})

    def test_outage_retried_with_backoff(self) -> None:
        """Sightings made while PostgreSQL is down are kept and written once it is back, after a backoff."""
        self.db.failing = True
        registry = self.start(retry_delay=2, max_retry_delay=4)
        agent_id, hash16 = identity(3)
        registry.seen(agent_id, hash16, self.clock.seconds())
        self.clock.advance(1)  # fails: next attempt 2 s later
        self.clock.advance(1)
        self.assertEqual(self.db.statements, ["INSERT"])
        self.db.failing = False
        self.clock.advance(1)
        self.assertIn(agent_id, self.db.rows)
        self.assertEqual(registry.pending, 0)

    def test_pending_bound(self) -> None:
        """Past `max_pending`, sightings are counted as dropped and forgotten, and queued again by the agent's next request."""
        self.db.failing = True
        registry = self.start(max_pending=5)
        for n in range(8):
            registry.seen(*identity(n), self.clock.seconds())
        self.assertEqual(registry.pending, 5)
        self.assertEqual(sample(self.metrics, "gateway_agent_sightings_dropped_total"), 3)
        self.db.failing = False
        self.clock.advance(1)
        self.assertEqual(len(self.db.rows), 5)
        registry.seen(*identity(7), self.clock.seconds())
        self.clock.advance(1)
        self.assertEqual(len(self.db.rows), 6)

    def test_malformed_identity_ignored(self) -> None:
        """An identity that the agents table would refuse is ignored, not queued, and seen() never raises."""
        registry = self.start()
        registry.seen("smolt-XYZ", "0" * 16, self.clock.seconds())
        registry.seen("smolt-00000000", "1" * 16, self.clock.seconds())  # id and hash disagree
        registry.seen(None, None, None)  # type: ignore[arg-type]
        self.assertEqual(registry.pending, 0)

    def test_stop_writes_pending(self) -> None:
        """Stopping writes what is pending once, ignoring the backoff, and leaves no timer behind."""
        registry = self.start()
        registry.seen(*identity(4), self.clock.seconds())
        self.successResultOf(registry.stopService())
        self.assertEqual(len(self.db.rows), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hung_write_times_out(self) -> None:
        """A write that gets no answer is given up at the write timeout, and its sightings retried later."""
        registry = self.start(write_timeout=2, retry_delay=1)
        hung: list[Deferred] = []
        answer = self.db.run_query
        self.db.run_query = lambda *a, **kw: hung.append(Deferred()) or hung[-1]  # type: ignore[method-assign]
        registry.seen(*identity(5), self.clock.seconds())
        self.clock.advance(1)
        self.clock.advance(2)
        self.assertTrue(hung[0].called)
        self.db.run_query = answer  # type: ignore[method-assign]
        self.clock.advance(1)
        self.assertEqual(len(self.db.rows), 1)


class AgentRegistryPostgresTests(TestCase):
    timeout = 60

    async def test_concurrent_first_sightings_make_one_row(self) -> None:
        """Two processes seeing the same new agents at once, writing concurrently, create exactly one row per agent."""
        dbname = await migrated_database()
        registries = []
        for _ in range(2):
            db = Database(f"postgresql://postgres@127.0.0.1:5432/{dbname}", reactor=reactor, pool_size=2)
            db.startService()
            self.addCleanup(db.stopService)
            await db.when_connected().addTimeout(10, reactor)
            registry = AgentRegistry(db, clock=reactor, metrics=Metrics("test"), flush_interval=3600, batch_size=50)
            registry.startService()
            registries.append(registry)
        now = reactor.seconds()
        for registry in registries:
            for n in range(300):
                registry.seen(*identity(n), now)
        # Both flush together: the statements race in PostgreSQL on the same keys.
        await Deferred.fromCoroutine(_both(registries))
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*), count(DISTINCT id), count(last_seen) FROM agents")
                self.assertEqual(cursor.fetchone(), (300, 300, 300))
        finally:
            connection.close()
        for registry in registries:
            self.assertEqual(registry.pending, 0)


async def _both(registries: list[AgentRegistry]) -> None:
    stops = [registry.stopService() for registry in registries]
    for stop in stops:
        await stop
