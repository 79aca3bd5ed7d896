"""
Tests of the recorder: in memory on a fake clock with a fake database (timing, batching,
backoff, spool, overflow, drops, stop), then against the real PostgreSQL behind a FaultProxy
(outages in the middle of a series, restarts with a spool, memory during an outage).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smoltbot.store.pool import Database, DatabaseUnavailable
from smoltbot.metrics import Metrics
from smoltbot.store.migrate import apply_pending, discover, migrations_dir
from smoltbot.records.writer import Recorder, WorkerThread
from smoltbot.records.row import COLUMNS, RequestRecord
from smoltbot.records.spool import Spool
from tests.faultproxy import FaultProxy
from tests.support import InlineWorker, new_database
from tests.test_records import make_record
from tests.test_spool import segment_files


class FakeDatabase:
    """Stands in for the pool: keeps rows by request id, or fails or hangs as the test decides."""

    def __init__(self) -> None:
        self.connected = True
        self.mode: Any = "ok"  # "ok", "hang", or an exception to fail with
        self.rows: dict[str, dict] = {}
        self.batches: list[list[str]] = []  # request ids of every insert attempted, in order
        self.hung: list[Deferred] = []
        self.refused: set[str] = set()  # request ids the schema rejects

    def run_query(self, sql, params=None, *, retry_idempotent=False):
        if not self.connected:
            return fail(DatabaseUnavailable("database unavailable: connection refused"))
        rows = json.loads(params[0])
        self.batches.append([row["request_id"] for row in rows])
        if self.mode == "hang":
            self.hung.append(Deferred())
            return self.hung[-1]
        if isinstance(self.mode, Exception):
            return fail(self.mode)
        if any(row["request_id"] in self.refused for row in rows):
            return fail(psycopg2.DataError("value refused by a constraint"))
        new = [row for row in rows if row["request_id"] not in self.rows]
        self.rows.update((row["request_id"], row) for row in new)
        return succeed([(len(new),)])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class RecorderTests(SynchronousTestCase):
    """The recorder on a fake clock; spool I/O runs inline, on real files."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = FakeDatabase()
        self.metrics = Metrics("test")
        self.directory = os.path.join(self.mktemp(), "spool")
        self.events: list[dict] = []

    def start(self, directory: str | None = None, **kw: Any) -> Recorder:
        options = dict(queue_size=1000, batch_size=100, flush_interval=1, write_timeout=5, retry_delay=2, max_retry_delay=8)
        options.update(kw)
        recorder = Recorder(
            self.db, Spool(directory or self.directory), clock=self.clock, metrics=self.metrics, worker=InlineWorker(), **options
        )
        recorder.log = Logger(namespace="recorder", observer=self.events.append)
        recorder.startService()
        return recorder

    def stop(self, recorder: Recorder) -> None:
        self.successResultOf(recorder.stopService())

    def messages(self, level: str) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == level]

    def test_batches_written_once(self) -> None:
        """Full batches are written at once, the rest at the interval, each record exactly once, in one statement per batch."""
        recorder = self.start()
        for n in range(250):
            recorder.record(make_record(n))
        self.assertEqual(self.db.batches, [])  # never inside record(): on the next reactor turn
        self.clock.advance(0)
        self.assertEqual([len(b) for b in self.db.batches], [100, 100])
        self.clock.advance(1)
        self.assertEqual([len(b) for b in self.db.batches], [100, 100, 50])
        self.assertEqual(len(self.db.rows), 250)
        self.assertEqual(sample(self.metrics, "gateway_traces_written_total"), 250)
        self.assertEqual(sample(self.metrics, "gateway_background_tasks_total", task="record_flush"), 3)
        self.assertEqual(sample(self.metrics, "gateway_trace_queue_depth"), 0)
        self.assertEqual(sample(self.metrics, "gateway_trace_flush_duration_seconds_count"), 3)
        self.stop(recorder)

    def test_partial_batch_waits_at_most_one_interval(self) -> None:
        """A lone record waits for the flush interval, no longer."""
        recorder = self.start()
        recorder.record(make_record(1))
        self.clock.advance(0.9)
        self.assertEqual(self.db.rows, {})
        self.clock.advance(0.1)
        self.assertEqual(list(self.db.rows), ["req-000001"])
        self.stop(recorder)

    def test_outage_spools_then_replays(self) -> None:
        """While PostgreSQL is down batches go to the spool without a database call; once it is back they are replayed and the segment deleted."""
        self.db.connected = False
        recorder = self.start()
        for n in range(250):
            recorder.record(make_record(n))
        self.clock.advance(1)
        self.assertEqual(self.db.batches, [])
        self.assertEqual(recorder.spool_backlog.queued, 0)
        self.assertGreater(recorder.spool_backlog.spool_bytes, 0)
        self.assertEqual(recorder.health_check(), {"ok": True, "queue": 0, "spoolBytes": recorder.spool_backlog.spool_bytes})
        self.db.connected = True
        self.clock.advance(1)
        self.assertEqual(sorted(self.db.rows), [f"req-{n:06d}" for n in range(250)])
        self.assertEqual(segment_files(self.directory), [])
        self.assertEqual(recorder.spool_backlog.spool_bytes, 0)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 0)
        self.assertEqual(sample(self.metrics, "gateway_background_tasks_total", task="spool_replay"), 3)
        self.assertEqual(self.messages("warn"), ["PostgreSQL cannot take request records, spooling: no database connection"])
        self.assertEqual(self.messages("info").count("PostgreSQL takes request records again"), 1)
        self.stop(recorder)

    def test_failures_back_off(self) -> None:
        """After a failed insert, PostgreSQL is tried again only after a doubling backoff, and recovery is logged once."""
        self.db.mode = DatabaseUnavailable("database connection lost: reset")
        recorder = self.start()
        attempts = []
        for second in range(1, 12):
            recorder.record(make_record(second))
            if second == 5:
                self.db.mode = "ok"
            before = len(self.db.batches)
            self.clock.advance(1)
            if len(self.db.batches) > before:
                attempts.append(second)
        # t=1 fails (retry at 3); t=3 fails (retry at 7); t=7 succeeds; then every tick.
        self.assertEqual(attempts[:3], [1, 3, 7])
        self.assertEqual(sorted(self.db.rows), [f"req-{n:06d}" for n in range(1, 12)])
        self.assertEqual(len(self.messages("warn")), 1)
        self.assertEqual(self.messages("info").count("PostgreSQL takes request records again"), 1)
        [recovery] = [e for e in self.events if formatEvent(e) == "PostgreSQL takes request records again"]
        self.assertEqual((recovery["failures"], recovery["failing_for"]), (2, 6))  # failed at t=1 and t=3, written at t=7
        self.stop(recorder)

    def test_slow_insert_goes_to_spool(self) -> None:
        """An insert that outlasts the write timeout is given up and its batch spooled; it is replayed after the backoff."""
        self.db.mode = "hang"
        recorder = self.start()
        for n in range(10):
            recorder.record(make_record(n))
        self.clock.advance(1)
        self.assertEqual(len(self.db.hung), 1)
        self.clock.advance(5)
        self.assertGreater(recorder.spool_backlog.spool_bytes, 0)
        self.assertTrue(self.db.hung[0].called)  # cancelled
        self.db.mode = "ok"
        self.clock.advance(2)
        self.assertEqual(len(self.db.rows), 10)
        self.assertEqual(segment_files(self.directory), [])
        self.stop(recorder)

    def test_overflow_spills_to_spool_without_drops(self) -> None:
        """Records arriving while an insert hangs overflow to the spool, the queue never exceeding its bound, and none is lost."""
        self.db.mode = "hang"
        recorder = self.start(queue_size=200)
        deepest = 0
        for n in range(5000):
            recorder.record(make_record(n))
            deepest = max(deepest, recorder.spool_backlog.queued)
            if n == 150:
                self.clock.advance(0)  # the first full batch is now stuck in the database
        self.assertLessEqual(deepest, 200)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 0)
        self.assertGreater(recorder.spool_backlog.spool_bytes, 4000 * 300)
        self.db.mode = "ok"
        self.clock.advance(5)  # the hung insert times out: its batch goes to the spool
        self.clock.pump([1] * 10)
        self.assertEqual(len(self.db.rows), 5000)
        self.assertEqual(segment_files(self.directory), [])
        self.stop(recorder)

    def test_unwritable_spool_drops_are_counted_and_logged(self) -> None:
        """With PostgreSQL down and a spool folder that cannot be created, records are dropped, counted, logged once a minute, and readiness fails."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a folder")
        self.db.connected = False
        recorder = self.start(os.path.join(blocker, "spool"))
        for second in range(3):
            for n in range(150):
                recorder.record(make_record(second * 1000 + n))
            self.clock.advance(1)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 450)
        drops = [m for m in self.messages("error") if m.startswith("dropped")]
        self.assertEqual(len(drops), 1)
        self.assertIn("spool not writable", drops[0])
        check = recorder.health_check()
        self.assertFalse(check["ok"])
        self.assertIn("Not a directory", check["error"])
        self.stop(recorder)

    def test_corrupt_spool_line_skipped_and_counted(self) -> None:
        """A spool segment with a corrupt line is replayed without it: the line is counted and logged, the rest written."""
        os.makedirs(self.directory)
        lines = [make_record(1).to_json(), '{"request_id": "half', make_record(2).to_json()]
        with open(os.path.join(self.directory, "00000000000000000001-1-1.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
        recorder = self.start()
        self.clock.advance(1)
        self.assertEqual(sorted(self.db.rows), ["req-000001", "req-000002"])
        self.assertEqual(sample(self.metrics, "gateway_trace_spool_corrupt_lines_total"), 1)
        self.assertTrue(any("corrupt" in m for m in self.messages("error")))
        self.assertEqual(segment_files(self.directory), [])
        self.stop(recorder)

    def test_stop_writes_the_queue_to_postgresql(self) -> None:
        """Stopping writes every queued record to PostgreSQL before it finishes."""
        recorder = self.start()
        for n in range(250):
            recorder.record(make_record(n))
        self.stop(recorder)
        self.assertEqual(len(self.db.rows), 250)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_spools_when_postgresql_is_down_and_a_restart_replays(self) -> None:
        """Stopping while PostgreSQL is down puts the queue in the spool; the next start replays it and removes it."""
        self.db.connected = False
        recorder = self.start()
        for n in range(250):
            recorder.record(make_record(n))
        self.stop(recorder)
        self.assertEqual(self.db.rows, {})
        self.assertEqual(len(segment_files(self.directory)), 1)
        recorder.record(make_record(999))  # too late: counted, never raised
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 1)
        self.db.connected = True
        self.metrics = Metrics("test")
        restarted = self.start()  # replays at once
        self.assertTrue(any("holds" in m and "in 1 segments" in m for m in self.messages("info")))
        self.assertEqual(len(self.db.rows), 250)
        self.assertEqual(segment_files(self.directory), [])
        self.stop(restarted)

    def test_stop_gives_up_on_postgresql_after_the_stop_timeout(self) -> None:
        """A stop whose insert hangs spools that batch at the write timeout and everything else at once."""
        self.db.mode = "hang"
        recorder = self.start(stop_timeout=3, write_timeout=5)
        for n in range(250):
            recorder.record(make_record(n))
        stopped = recorder.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.successResultOf(stopped)
        self.assertEqual(len(self.db.batches), 1)
        spool = Spool(self.directory)
        spool.open()
        batch = spool.read(1000)
        self.assertEqual(len(batch.records), 250)
        spool.close()

    def test_refused_record_dropped_rest_written(self) -> None:
        """A record the schema refuses is dropped (counted, logged with its id) and the rest of its batch is written."""
        self.db.refused = {"req-000005"}
        recorder = self.start()
        for n in range(10):
            recorder.record(make_record(n))
        self.clock.advance(1)
        self.assertEqual(len(self.db.rows), 9)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 1)
        self.assertTrue(any("req-000005" in m for m in self.messages("error")))
        self.stop(recorder)

    def test_replay_alternates_with_live_batches(self) -> None:
        """While a spool is replayed, live batches still go out: the two take turns."""
        spool = Spool(self.directory)
        spool.open()
        for start in range(0, 500, 100):
            spool.append([make_record(n) for n in range(start, start + 100)])
        spool.close()
        self.db.connected = False
        recorder = self.start()
        self.db.connected = True
        for n in range(300):
            recorder.record(make_record(n, request_id=f"live-{n}"))
        self.clock.advance(0)
        kinds = [batch[0].split("-")[0] for batch in self.db.batches]
        self.assertEqual(kinds[:6], ["live", "req", "live", "req", "live", "req"])
        self.assertEqual(len(self.db.rows), 800)
        self.stop(recorder)

    def test_record_never_raises(self) -> None:
        """Handing over something that is not a record is counted as a drop and logged, never raised."""
        recorder = self.start()
        recorder.record("not a record")  # type: ignore[arg-type]
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 1)
        self.stop(recorder)


# -- against the real PostgreSQL


async def migrated_database() -> str:
    """A private database with the shipped migrations applied; returns its name."""
    url = new_database()
    db = Database(url, reactor=reactor, pool_size=1)
    db.startService()
    try:
        await db.when_connected().addTimeout(10, reactor)
        assert await apply_pending(db, discover(migrations_dir()), lambda line: None)
    finally:
        await db.stopService()
    return url.rsplit("/", 1)[1]


def until(recorder: Recorder, metrics: Metrics, condition: Callable[[], bool], timeout: float = 30.0) -> Deferred[None]:
    """
    Fire once `condition()` holds. It is checked whenever records are written to PostgreSQL, a
    spool write ends or the recorder logs (a segment replayed), so nothing polls.
    """
    done: Deferred[None] = Deferred()

    def check(*ignored: Any) -> None:
        if not done.called and condition():
            done.callback(None)

    def watch(counter: Any) -> None:
        increment = counter.inc

        def counted(amount: float = 1.0) -> None:
            increment(amount)
            check()

        counter.inc = counted

    watch(metrics.traces_written)
    watch(metrics.background_tasks.labels(task="spool_write"))

    def observe(event: dict) -> None:
        globalLogPublisher(event)
        check()

    recorder.log = Logger(namespace="smoltbot.records.writer.Recorder", source=recorder, observer=observe)
    check()
    return done.addTimeout(timeout, reactor)


class RecorderPostgresTests(TestCase):
    """The recorder with its worker thread, writing into a private database through a FaultProxy."""

    timeout = 60

    async def setUp(self) -> None:
        self.dbname = await migrated_database()
        self.proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        self.port = await self.proxy.start()
        self.addCleanup(self.proxy.stop)
        self.directory = os.path.join(self.mktemp(), "spool")
        self.metrics = Metrics("test")

    async def pool(self) -> Database:
        db = Database(
            f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}",
            reactor=reactor,
            pool_size=2,
            reconnect_delay=0.05,
            max_reconnect_delay=0.2,
            query_timeout=2,
        )
        db.startService()
        self.addCleanup(db.stopService)
        return db

    def recorder(self, db: Database, **kw: Any) -> Recorder:
        options = dict(batch_size=50, queue_size=500, flush_interval=0.05, write_timeout=1, retry_delay=0.05, max_retry_delay=0.2)
        options.update(kw)
        recorder = Recorder(db, Spool(self.directory), clock=reactor, metrics=self.metrics, worker=WorkerThread(reactor), **options)
        recorder.startService()
        self.addCleanup(lambda: recorder.stopService() if recorder.running else None)
        return recorder

    async def table(self) -> list[tuple[str, int]]:
        """(request_id, copies) of every row, read straight from PostgreSQL."""
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT request_id, count(*) FROM request_records GROUP BY request_id ORDER BY request_id")
                return cursor.fetchall()
        finally:
            connection.close()

    async def test_outage_in_the_middle_of_a_series(self) -> None:
        """PostgreSQL cut off and refused midway through a series: every record ends up in the table exactly once."""
        db = await self.pool()
        await db.when_connected().addTimeout(10, reactor)
        recorder = self.recorder(db)
        written = lambda: sample(self.metrics, "gateway_traces_written_total")  # noqa: E731
        for n in range(1000):
            recorder.record(make_record(n))
        await until(recorder, self.metrics, lambda: written() == 1000)
        self.proxy.mode = "refuse"
        self.proxy.cut()
        for n in range(1000, 2000):
            recorder.record(make_record(n))
        await until(recorder, self.metrics, lambda: recorder.spool_backlog.spool_bytes and not recorder.spool_backlog.queued)
        self.assertLess(written(), 1100)  # at most a batch cut in flight made it
        self.proxy.mode = "relay"
        for n in range(2000, 3000):
            recorder.record(make_record(n))
        await until(recorder, self.metrics, lambda: written() >= 3000 and not recorder.spool_backlog.spool_bytes)
        await recorder.stopService()
        rows = await self.table()
        self.assertEqual(len(rows), 3000)
        self.assertEqual({copies for _, copies in rows}, {1})
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 0)
        self.assertEqual(segment_files(self.directory), [])

    async def test_restart_with_a_spool_replays_and_removes_it(self) -> None:
        """Records spooled by a run that stopped with PostgreSQL down are written by the next run, which deletes the spool."""
        self.proxy.mode = "refuse"
        db = await self.pool()
        first = self.recorder(db)
        for n in range(700):
            first.record(make_record(n))
        await first.stopService()
        self.assertEqual(await self.table(), [])
        self.assertTrue(segment_files(self.directory))
        self.proxy.mode = "relay"
        second = self.recorder(await self.pool())
        written = lambda: sample(self.metrics, "gateway_traces_written_total")  # noqa: E731
        await until(second, self.metrics, lambda: written() >= 700 and not second.spool_backlog.spool_bytes)
        await second.stopService()
        self.assertEqual(segment_files(self.directory), [])
        self.assertEqual(len(await self.table()), 700)

    async def test_stop_flushes_the_queue_into_postgresql(self) -> None:
        """A stop right after records arrive (SIGTERM) writes them all to PostgreSQL, leaving no spool."""
        db = await self.pool()
        await db.when_connected().addTimeout(10, reactor)
        recorder = self.recorder(db, flush_interval=60)
        for n in range(120):
            recorder.record(make_record(n))
        await recorder.stopService()
        self.assertEqual(len(await self.table()), 120)
        self.assertEqual(segment_files(self.directory), [])

    async def test_memory_flat_during_an_outage(self) -> None:
        """While PostgreSQL hangs, records in memory stay within the queue bound while the spool grows; all arrive afterwards."""
        db = await self.pool()
        await db.when_connected().addTimeout(10, reactor)
        self.proxy.mode = "hang"
        for inbound in list(self.proxy.inbound):
            inbound.transport.pauseProducing()  # established connections stop answering too
        recorder = self.recorder(db, queue_size=1000, batch_size=100)
        deepest = 0
        for n in range(20_000):
            recorder.record(make_record(n))
            deepest = max(deepest, recorder.spool_backlog.queued)
            if n % 20 == 0:
                await deferLater(reactor, 0.001)  # at most 20,000 requests a second
        self.assertLessEqual(deepest, 2 * 1000 + 100)  # the queue, and at most as much again on its way to the spool
        await until(recorder, self.metrics, lambda: recorder.spool_backlog.queued == 0)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 0)
        self.assertGreater(recorder.spool_backlog.spool_bytes, 19_000 * 300)
        self.proxy.mode = "relay"
        self.proxy.cut()
        await until(recorder, self.metrics, lambda: sample(self.metrics, "gateway_traces_written_total") >= 20_000)
        await recorder.stopService()
        self.assertEqual(len(await self.table()), 20_000)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 0)

    async def test_values_stored_as_recorded(self) -> None:
        """Every field reaches its column unchanged: text (unicode included), numbers, booleans, NULLs and the timestamp."""
        db = await self.pool()
        await db.when_connected().addTimeout(10, reactor)
        recorder = self.recorder(db)
        full = make_record(1, model="gémini-2.5 «pro»", bytes_out=2**40, ttfb_ms=0.125, created_at=1_760_000_000.25)
        sparse = RequestRecord(request_id="sparse", provider="gemini", method="GET", path="/v1beta/models", created_at=1_760_000_001.0)
        recorder.record(full)
        recorder.record(sparse)
        await recorder.stopService()
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {','.join(COLUMNS[:-1])}, extract(epoch FROM created_at) FROM request_records ORDER BY request_id")
                rows = cursor.fetchall()
        finally:
            connection.close()
        for record, row in zip([full, sparse], rows):
            self.assertEqual(row[:-1], tuple(getattr(record, name) for name in COLUMNS[:-1]))
            self.assertAlmostEqual(float(row[-1]), record.created_at, places=5)

    async def test_refused_row_dropped_rest_written(self) -> None:
        """A row the schema refuses (a constraint added later) is dropped and counted; its batch's other rows are written."""
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.dbname)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE request_records ADD CONSTRAINT no_poison CHECK (request_id <> 'req-000003')")
        finally:
            connection.close()
        db = await self.pool()
        await db.when_connected().addTimeout(10, reactor)
        recorder = self.recorder(db)
        for n in range(10):
            recorder.record(make_record(n))
        await recorder.stopService()
        self.assertEqual(len(await self.table()), 9)
        self.assertEqual(sample(self.metrics, "gateway_traces_dropped_total"), 1)
        self.assertEqual(recorder.spool_backlog.spool_bytes, 0)
