"""Tests of `smoltbot agents` and `smoltbot requests`: table formatting, and the real command over a private database."""

import json

import psycopg2
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smoltbot.records.row import COLUMNS
from smoltbot.cli.reports import format_table
from tests.process import base_env, free_port, run_command
from tests.test_records import make_record
from tests.test_recorder import migrated_database

ALICE, BOB, CAROL = "smolt-aaaaaaaa", "smolt-bbbbbbbb", "smolt-cccccccc"


class FormatTableTests(SynchronousTestCase):
    def test_aligned(self):
        """Columns are as wide as their widest cell, two spaces apart, numbers right-aligned, no trailing spaces."""
        lines = format_table(["NAME", "N"], [["a", "1"], ["longer", "100"]], right=(1,))
        self.assertEqual(lines, ["NAME      N", "a         1", "longer  100"])


class ReportCommandTests(TestCase):
    timeout = 60
    env = None

    async def setUp(self):
        if ReportCommandTests.env is None:
            dbname = await migrated_database()
            _fill(dbname)
            ReportCommandTests.env = base_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{dbname}")

    async def command(self, *argv, env=None):
        child = run_command(self, list(argv), env or self.env)
        code = await child.wait_exit()
        return code, "\n".join(child.lines), child.stderr

    async def test_agents_text(self):
        """`smoltbot agents` prints an aligned table, most recently seen first, with request counts."""
        code, out, err = await self.command("agents")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["AGENT", "FIRST", "SEEN", "LAST", "SEEN", "REQUESTS"])
        self.assertEqual([line.split()[0] for line in lines[1:]], [CAROL, BOB, ALICE])
        self.assertEqual(lines[3].split()[-1], "3")  # alice
        self.assertEqual(lines[1].split()[-1], "1")  # carol: no agents row yet, seen in records only
        self.assertEqual(lines[2].split()[-1], "0")  # bob: no request recorded
        self.assertIn("2025-10-09 08:53:20Z", lines[3])
        self.assertEqual(len({line.index("REQUESTS") if i == 0 else None for i, line in enumerate(lines)} - {None}), 1)

    async def test_agents_json(self):
        """`smoltbot agents --json` gives id, first and last seen (ISO 8601) and the request count of each agent."""
        code, out, _ = await self.command("agents", "--json")
        self.assertEqual(code, 0)
        agents = {a["id"]: a for a in json.loads(out)}
        self.assertEqual(set(agents), {ALICE, BOB, CAROL})
        self.assertEqual(agents[ALICE], {"id": ALICE, "first_seen": "2025-10-09T08:53:20.000Z", "last_seen": "2025-10-09T08:53:22.000Z", "requests": 3})
        self.assertEqual(agents[BOB]["requests"], 0)

    async def test_requests_text(self):
        """`smoltbot requests` lists the latest records newest first as an aligned table of the useful columns."""
        code, out, err = await self.command("requests", "--limit", "2")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:3], ["TIME", "REQUEST", "AGENT"])
        self.assertEqual(len(lines), 3)
        self.assertIn("req-000100", lines[1])
        self.assertIn("req-000050", lines[2])
        self.assertIn("end_turn", lines[2])
        widths = {len(line) for line in lines}
        self.assertLessEqual(max(widths) - min(widths), 40)

    async def test_requests_json_for_one_agent(self):
        """`smoltbot requests --agent ID --json` returns that agent's records, every column, newest first."""
        code, out, _ = await self.command("requests", "--agent", ALICE, "--json")
        self.assertEqual(code, 0)
        records = json.loads(out)
        self.assertEqual([r["request_id"] for r in records], ["req-000002", "req-000001", "req-000000"])
        self.assertEqual(set(records[0]), set(COLUMNS))
        self.assertEqual(records[0]["input_tokens"], 100)
        self.assertEqual(records[0]["created_at"], "2025-10-09T08:53:22.000Z")
        code, out, _ = await self.command("requests", "--agent", "smolt-00000000")
        self.assertEqual((code, out), (0, "no requests recorded for smolt-00000000"))

    async def test_bad_limit_and_unreachable_database(self):
        """A bad --limit is a usage error; an unreachable database is one line and exit status 1."""
        code, _, err = await self.command("requests", "--limit", "0")
        self.assertEqual(code, 2)
        self.assertIn("--limit", err)
        env = base_env(DATABASE_URL=f"postgresql://u:pw-marker@127.0.0.1:{free_port()}/x", DATABASE_CONNECT_TIMEOUT_SECONDS="1")
        code, out, err = await self.command("agents", env=env)
        self.assertEqual(code, 1)
        self.assertTrue(out.startswith("error: "), out)
        self.assertNotIn("pw-marker", out + err)

    async def test_not_migrated(self):
        """On a database without the schema, the commands say to run `smoltbot migrate`."""
        from tests.support import new_database

        code, out, _ = await self.command("agents", env=base_env(DATABASE_URL=new_database()))
        self.assertEqual(code, 1)
        self.assertIn("smoltbot migrate", out)


def _fill(dbname: str) -> None:
    """Alice: a row and 3 requests; Bob: a row, no requests; Carol: one request, no row yet; one record without an agent."""
    records = [make_record(n, agent_id=ALICE) for n in range(3)]
    records.append(make_record(100, agent_id=CAROL, created_at=1_760_000_100.0, model="gpt-5", provider="openai"))
    records.append(make_record(50, agent_id=None))
    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO agents (id, agent_hash, first_seen, last_seen) VALUES"
                " (%s, 'aaaaaaaa00000000', to_timestamp(1760000000), to_timestamp(1760000001)),"
                " (%s, 'bbbbbbbb00000000', to_timestamp(1760000010), to_timestamp(1760000050))",
                (ALICE, BOB),
            )
            for record in records:
                values = [getattr(record, name) for name in COLUMNS]
                placeholders = ",".join("to_timestamp(%s)" if name == "created_at" else "%s" for name in COLUMNS)
                cursor.execute(f"INSERT INTO request_records ({','.join(COLUMNS)}) VALUES ({placeholders})", values)
    finally:
        connection.close()
