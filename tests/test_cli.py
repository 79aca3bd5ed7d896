"""End-to-end tests of the `smoltbot` operator command: check-config, migrate, license."""

import json
import time

import jwt
from twisted.trial.unittest import TestCase

from tests.process import base_env, free_port, run_command
from tests.support import new_database


class CheckConfigTests(TestCase):
    timeout = 60

    async def command(self, argv, env):
        child = run_command(self, argv, env)
        code = await child.wait_exit()
        return code, "\n".join(child.lines), child.stderr

    async def test_missing_variables(self):
        """check-config names every missing variable and exits non-zero."""
        env = base_env()
        del env["AIP_ENABLED"]
        code, out, _ = await self.command(["check-config"], env)
        self.assertEqual(code, 1)
        self.assertIn("DATABASE_URL", out)
        self.assertIn("ANTHROPIC_API_KEY", out)

    async def test_pending_migrations_then_migrate_then_ok(self):
        """A fresh database fails the check for pending migrations; after `migrate` the check passes."""
        env = base_env(DATABASE_URL=new_database())
        code, out, _ = await self.command(["check-config", "--json"], env)
        report = json.loads(out)
        self.assertEqual(code, 1)
        self.assertTrue(report["checks"]["postgresql"]["ok"])
        self.assertIn("0001_initial.sql", report["checks"]["migrations"]["pending"])
        code, out, _ = await self.command(["migrate"], env)
        self.assertEqual(code, 0, out)
        self.assertIn("OK 0001_initial.sql", out)
        code, out, _ = await self.command(["migrate"], env)
        self.assertEqual(code, 0)
        self.assertNotIn("OK 0001", out)
        code, out, _ = await self.command(["check-config"], env)
        self.assertEqual(code, 0, out)
        self.assertIn("configuration OK", out)
        self.assertIn("kv_mode=memory", out)

    async def test_unreachable_dependencies(self):
        """A database and a Redis that cannot be reached are reported as FAIL with the reason, without passwords."""
        env = base_env(
            DATABASE_URL=f"postgresql://smoltbot:pw-marker-123@127.0.0.1:{free_port()}/smoltbot",
            REDIS_URL=f"redis://:redis-marker-456@127.0.0.1:{free_port()}/0",
            DATABASE_CONNECT_TIMEOUT_SECONDS="1",
            REDIS_CONNECT_TIMEOUT_SECONDS="1",
        )
        code, out, err = await self.command(["check-config", "--json"], env)
        report = json.loads(out)
        self.assertEqual(code, 1)
        self.assertFalse(report["checks"]["postgresql"]["ok"])
        self.assertFalse(report["checks"]["redis"]["ok"])
        self.assertNotIn("pw-marker-123", out + err)
        self.assertNotIn("redis-marker-456", out + err)

    async def test_license_reported_without_token(self):
        """`smoltbot license` prints the claims and judgement but never the token; expired exits 1."""
        token = jwt.encode({"license_id": "lic-42", "exp": int(time.time()) - 10_000}, "s" * 32, algorithm="HS256")
        code, out, err = await self.command(["license"], base_env(DATABASE_URL="postgresql://x@127.0.0.1/x", MNEMOM_LICENSE_JWT=token))
        self.assertEqual(code, 1)
        self.assertIn("lic-42", out)
        self.assertIn("license_expired", out)
        self.assertNotIn(token, out + err)
        code, out, _ = await self.command(["license"], base_env(DATABASE_URL="postgresql://x@127.0.0.1/x"))
        self.assertEqual(code, 0)
        self.assertIn("no license configured", out)
