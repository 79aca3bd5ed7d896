"""
Tests for smoltbot.store.migrate: pure discovery and planning, then whole runs against real PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smoltbot.store.pool import Database
from smoltbot.store.migrate import (
    Migration,
    MigrationError,
    Status,
    discover,
    format_status,
    migrate_command,
    migrations_dir,
    pending_migrations,
    plan,
)
from tests.faultproxy import FaultProxy
from tests.support import new_database


def make_dir(test: SynchronousTestCase, files: dict[str, str]) -> str:
    """A fresh folder holding `files` (name -> content)."""
    path = test.mktemp()
    os.makedirs(path)
    write_files(path, files)
    return path


def write_files(path: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def migration(name: str, text: str = "SELECT 1;") -> Migration:
    return Migration(name, sha256(text), text)


class DiscoverTests(SynchronousTestCase):
    def test_discover_sorted_with_checksums(self) -> None:
        """discover() returns the .sql files sorted by name with the SHA-256 of their bytes, ignoring other files."""
        path = make_dir(self, {"0002_b.sql": "SELECT 2;", "0001_a.sql": "SELECT 1;", "README": "notes"})
        self.assertEqual(discover(path), [migration("0001_a.sql"), migration("0002_b.sql", "SELECT 2;")])

    def test_bad_names_rejected(self) -> None:
        """A .sql file not named NNNN_name.sql (lowercase) is an error naming the file."""
        for name in ["1_init.sql", "0001-init.sql", "0001_Init.sql", "0001_.sql", "00001_init.sql", "init.sql"]:
            error = self.assertRaises(MigrationError, discover, make_dir(self, {name: "SELECT 1;"}))
            self.assertIn(name, str(error))

    def test_duplicate_numbers_rejected(self) -> None:
        """Two files with the same number are an error, since their order would be arbitrary."""
        path = make_dir(self, {"0001_a.sql": "", "0001_b.sql": ""})
        self.assertIn("same number", str(self.assertRaises(MigrationError, discover, path)))

    def test_shipped_migrations_found(self) -> None:
        """migrations_dir() finds the shipped migrations, starting with 0001_initial.sql."""
        self.assertEqual(discover(migrations_dir())[0].filename, "0001_initial.sql")


class PlanTests(SynchronousTestCase):
    def test_plan(self) -> None:
        """plan() sorts files into applied, pending and changed, and table rows without a file into missing."""
        a, b, c = migration("0001_a.sql"), migration("0002_b.sql"), migration("0003_c.sql")
        cases = [
            ({}, Status((), (a, b, c), (), ())),
            ({a.filename: a.checksum}, Status((a.filename,), (b, c), (), ())),
            ({a.filename: "other", b.filename: b.checksum}, Status((b.filename,), (c,), (a.filename,), ())),
            ({"0000_old.sql": "x", a.filename: a.checksum}, Status((a.filename,), (b, c), (), ("0000_old.sql",))),
        ]
        for applied, expected in cases:
            self.assertEqual(plan([a, b, c], applied), expected)

    def test_format_status(self) -> None:
        """format_status() gives one line per file in name order, flagging changed and missing ones."""
        at = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
        status = Status(
            ("0002_b.sql",), (migration("0003_c.sql"),), ("0001_a.sql",), ("0000_z.sql",), {"0002_b.sql": at}
        )
        self.assertEqual(
            format_status(status),
            [
                "MISSING  0000_z.sql (applied, but there is no such file)",
                "CHANGED  0001_a.sql (applied checksum differs from the file)",
                "applied  0002_b.sql  2026-01-15T12:00:00+00:00",
                "pending  0003_c.sql",
            ],
        )


class MigrateCommandTests(TestCase):
    """`smoltbot migrate` runs, each test on a database of its own."""

    timeout = 60

    def setUp(self) -> None:
        self.dsn = new_database()
        self.db = Database(self.dsn, reactor=reactor, pool_size=1)
        self.db.startService()
        self.addCleanup(self.db.stopService)

    async def migrate(self, directory: str | None, status_only: bool = False) -> tuple[int, list[str]]:
        lines: list[str] = []
        code = await migrate_command(
            reactor,
            self.dsn,
            status_only=status_only,
            write=lines.append,
            connect_timeout=2,
            query_timeout=5,
            directory=directory,
        )
        return code, lines

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        await self.db.when_connected().addTimeout(5, reactor)
        return await self.db.run_query(sql)

    async def tracked(self) -> list[tuple[str, str]]:
        if not (await self.query("SELECT to_regclass('_schema_migrations') IS NOT NULL"))[0][0]:
            return []
        return await self.query("SELECT filename, checksum FROM _schema_migrations ORDER BY filename")

    async def test_applies_in_order(self) -> None:
        """Pending files are applied in name order, each reported `OK`, and tracked with their checksums."""
        files = {
            "0002_b.sql": "CREATE TABLE b (a_id int REFERENCES a (id));",
            "0001_a.sql": "CREATE TABLE a (id int PRIMARY KEY);",
        }
        self.assertEqual(await self.migrate(make_dir(self, files)), (0, ["OK 0001_a.sql", "OK 0002_b.sql"]))
        self.assertEqual(await self.tracked(), [(name, sha256(files[name])) for name in sorted(files)])

    async def test_rerun_is_noop(self) -> None:
        """Running again applies nothing and says so."""
        path = make_dir(self, {"0001_a.sql": "CREATE TABLE a (id int);"})
        await self.migrate(path)
        rows = await self.query("SELECT * FROM _schema_migrations")
        self.assertEqual(await self.migrate(path), (0, ["nothing to apply"]))
        self.assertEqual(await self.query("SELECT * FROM _schema_migrations"), rows)

    async def test_failure_stops_and_fix_applies(self) -> None:
        """A failing file is reported, exits 1 and leaves no trace; once fixed, the next run applies it and the rest."""
        path = make_dir(
            self,
            {
                "0001_a.sql": "CREATE TABLE a (id int);",
                "0002_b.sql": "CREATE TABLE half (id int);\nSELEC 1;",
                "0003_c.sql": "CREATE TABLE c (id int);",
            },
        )
        code, lines = await self.migrate(path)
        self.assertEqual(code, 1)
        self.assertEqual(lines, ["OK 0001_a.sql", 'FAIL 0002_b.sql: syntax error at or near "SELEC"'])
        self.assertEqual([name for name, _ in await self.tracked()], ["0001_a.sql"])
        self.assertEqual(await self.query("SELECT to_regclass('half'), to_regclass('c')"), [(None, None)])

        write_files(path, {"0002_b.sql": "CREATE TABLE half (id int);"})
        self.assertEqual(await self.migrate(path), (0, ["OK 0002_b.sql", "OK 0003_c.sql"]))

    async def test_status(self) -> None:
        """`--status` lists applied and pending files, and exits 1 flagging a file changed since it was applied."""
        path = make_dir(self, {"0001_a.sql": "CREATE TABLE a (id int);"})
        await self.migrate(path)
        write_files(path, {"0002_b.sql": "CREATE TABLE b (id int);"})
        code, lines = await self.migrate(path, status_only=True)
        self.assertEqual(code, 0)
        self.assertTrue(lines[0].startswith("applied  0001_a.sql  20"), lines)
        self.assertEqual(lines[1:], ["pending  0002_b.sql"])

        write_files(path, {"0001_a.sql": "CREATE TABLE a (id bigint);"})
        code, lines = await self.migrate(path, status_only=True)
        self.assertEqual(code, 1)
        self.assertEqual(lines, ["CHANGED  0001_a.sql (applied checksum differs from the file)", "pending  0002_b.sql"])

    async def test_bad_filename(self) -> None:
        """A badly named file stops the run before the database is touched."""
        code, lines = await self.migrate(make_dir(self, {"0001_a.sql": "SELECT 1;", "2_b.sql": "SELECT 1;"}))
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 1)
        self.assertIn("2_b.sql", lines[0])
        self.assertEqual(await self.tracked(), [])

    async def test_concurrent_runs_apply_each_file_once(self) -> None:
        """Two runners started together apply every file exactly once between them."""
        names = [f"000{n}_t{n}.sql" for n in range(1, 5)]
        sql = "SELECT pg_sleep(0.05); CREATE TABLE t{} (id int);"
        path = make_dir(self, {name: sql.format(i) for i, name in enumerate(names)})
        results = await gatherResults([Deferred.fromCoroutine(self.migrate(path)) for _ in range(2)])
        self.assertEqual([code for code, _ in results], [0, 0])
        ok_lines = sorted(line for _, lines in results for line in lines if line.startswith("OK "))
        self.assertEqual(ok_lines, [f"OK {name}" for name in names])
        self.assertEqual([name for name, _ in await self.tracked()], names)

    async def test_unreachable_database(self) -> None:
        """An unreachable database gives exit 1 and one line with the reason and no password."""
        proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        proxy.mode = "refuse"
        port = await proxy.start()
        self.addCleanup(proxy.stop)
        lines: list[str] = []
        code = await migrate_command(
            reactor,
            f"postgresql://postgres:Pw-Marker-7731@127.0.0.1:{port}/nowhere",
            status_only=False,
            write=lines.append,
            connect_timeout=0.3,
            query_timeout=1,
        )
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 1)
        self.assertIn("cannot reach the database postgresql://postgres:***@127.0.0.1", lines[0])
        self.assertNotIn("Pw-Marker-7731", lines[0])

    async def test_shipped_schema(self) -> None:
        """The shipped migrations apply to an empty database; then none is pending, and records need no agent row."""
        await self.db.when_connected().addTimeout(5, reactor)
        self.assertEqual(await pending_migrations(self.db), ["0001_initial.sql"])
        self.assertEqual(await self.migrate(None), (0, ["OK 0001_initial.sql"]))
        self.assertEqual(await pending_migrations(self.db), [])
        await self.db.run_operation(
            "INSERT INTO request_records (request_id, agent_id, provider, method, path) VALUES (%s, %s, %s, %s, %s)",
            ("req-1", "smolt-0123abcd", "anthropic", "POST", "/v1/messages"),
        )
        await self.db.run_operation(
            "INSERT INTO agents (id, agent_hash) VALUES (%s, %s)", ("smolt-0123abcd", "0123abcd4567ef89")
        )
        joined = await self.query("SELECT count(*) FROM request_records JOIN agents ON agents.id = agent_id")
        self.assertEqual(joined, [(1,)])
