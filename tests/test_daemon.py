"""
End-to-end tests of the real daemon process (`twistd -n smoltbot`): startup, configuration
errors, health, logging and shutdown — the troubleshooting cases of docs/TROUBLESHOOTING.md.
"""

import json
import os
import shutil
import socket
import tempfile
import time

import psycopg2

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests.faultproxy import FaultProxy
from tests.process import BIN, ChildProcess, base_env, free_port, get_json, start_daemon
from tests.support import new_database, new_state_dir
from tests.test_recorder import migrated_database
from tests.test_records import make_record


def started(record):
    return "starting: role=" in record["message"]


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    """Sends every request of an `Agent` to one UNIX socket."""

    def __init__(self, path):
        self.path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(reactor, self.path)


class DaemonProcessTests(TestCase):
    """The daemon as operators run it."""

    timeout = 120

    database_url = None

    def setUp(self):
        if DaemonProcessTests.database_url is None:
            DaemonProcessTests.database_url = new_database()

    def env(self, **extra):
        self.port = free_port()
        return base_env(**{"DATABASE_URL": self.database_url, "PORT": str(self.port), **extra})

    async def test_starts_serves_and_stops_cleanly(self):
        """Started with a valid environment, it logs a startup line, is live, started and ready, and SIGTERM exits 0."""
        began = time.monotonic()
        daemon = start_daemon(self, self.env())
        await daemon.wait_for(started)
        code, body = await get_json(self.port, "/health/startup")
        startup_seconds = time.monotonic() - began
        self.assertEqual(code, 200)
        code, body = await get_json(self.port, "/health/live")
        self.assertEqual((code, body["status"]), (200, "ok"))
        code, body = await get_json(self.port, "/health")
        self.assertEqual(body["aip_enabled"], False)
        line = [r for r in daemon.records if started(r)][0]
        for field in ("version", "role", "python_version", "kv_mode"):
            self.assertIn(field, line)
        self.assertEqual(line["kv_mode"], "memory")
        self.assertTrue(any(r["level"] == "warn" and "in-memory KV" in r["message"] for r in daemon.records))
        self.assertTrue(any("heartbeat disabled" in r["message"] for r in daemon.records))
        self.assertFalse(any(r["message"].startswith("[heartbeat]") for r in daemon.records))
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)
        for record in daemon.records:
            self.assertEqual(set(record) >= {"timestamp", "level", "service", "message"}, True, record)
            self.assertIn(record["level"], ("debug", "info", "warn", "error"))
        self.assertLess(startup_seconds, 30)

    async def test_ready_with_memory_kv(self):
        """With REDIS_URL unset and PostgreSQL reachable, readiness is 200 with redis in memory mode."""
        daemon = start_daemon(self, self.env())
        await daemon.wait_for(lambda r: "health check" in r["message"] or started(r))
        code, body = await self._ready_when(lambda b: b.get("status") != "starting")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["checks"]["redis"], {"ok": True, "latencyMs": body["checks"]["redis"]["latencyMs"], "mode": "memory"})
        self.assertTrue(body["checks"]["supabase"]["ok"])
        self.assertEqual(body["checks"]["recorder"], {"ok": True, "queue": 0, "spoolBytes": 0})

    async def _ready_when(self, condition, attempts=200):
        """Query /health/ready until `condition(body)` holds (each probe round takes 0.5 s)."""
        for _ in range(attempts):
            code, body = await get_json(self.port, "/health/ready")
            if condition(body):
                return code, body
            await deferLater(reactor, 0.1)
        self.fail(f"readiness never matched; last: {code} {body}")

    async def test_missing_variables(self):
        """Without DATABASE_URL and ANTHROPIC_API_KEY, it exits 1 listing both, on stderr and as a JSON line."""
        env = base_env(PORT=str(free_port()))
        del env["AIP_ENABLED"]
        daemon = start_daemon(self, env)
        self.assertEqual(await daemon.wait_exit(), 1)
        self.assertIn("Missing required environment variables:\n  DATABASE_URL\n  ANTHROPIC_API_KEY\n", daemon.stderr)
        self.assertIn("EnvValidationError", daemon.records[-1]["message"])
        self.assertEqual(daemon.records[-1]["level"], "error")

    async def test_redis_url_with_wrong_scheme(self):
        """REDIS_URL=http://... stops it with a configuration error naming REDIS_URL."""
        daemon = start_daemon(self, self.env(REDIS_URL="http://cache:6379"))
        self.assertEqual(await daemon.wait_exit(), 1)
        self.assertIn("REDIS_URL: must start with redis:// or rediss://", daemon.stderr)

    async def test_port_in_use(self):
        """A port already taken ends the process with exit 1 and one line naming the address and the fix."""
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        daemon = start_daemon(self, base_env(DATABASE_URL=self.database_url, PORT=str(port)))
        self.assertEqual(await daemon.wait_exit(), 1)
        expected = f"listen EADDRINUSE: address already in use 127.0.0.1:{port} (set PORT, or stop the process using it: lsof -i :{port})"
        self.assertIn(expected, daemon.stderr)
        self.assertTrue(any(r["message"] == expected for r in daemon.records))

    async def test_listen_endpoint(self):
        """LISTEN takes an endpoint description: on TCP port 0 the startup line names the port the OS chose."""
        daemon = start_daemon(self, base_env(DATABASE_URL=self.database_url, LISTEN="tcp:0:interface=127.0.0.1", PORT="1"))
        line = json.loads(await daemon.wait_for(started))
        port = line["port"]
        self.assertGreater(port, 1)
        self.assertIn(f"listening on 127.0.0.1:{port}", line["message"])
        self.assertEqual((await get_json(port, "/health/live"))[0], 200)
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)

    async def test_listen_unix_socket(self):
        """`--listen unix:PATH` serves HTTP on a UNIX socket, named in the startup line."""
        path = os.path.join(tempfile.mkdtemp(prefix="smoltbot-sock-"), "http.sock")
        daemon = start_daemon(self, self.env(), args=("--listen", f"unix:{path}"))
        line = json.loads(await daemon.wait_for(started))
        self.assertIn(f"listening on {path}", line["message"])
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(path), pool=HTTPConnectionPool(reactor, persistent=False))
        response = await agent.request(b"GET", b"http://localhost/health/live").addTimeout(10, reactor)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await readBody(response))["status"], "ok")
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)

    async def test_bad_listen(self):
        """A LISTEN that is no endpoint description stops the daemon with exit 1 and a configuration error naming LISTEN."""
        daemon = start_daemon(self, self.env(LISTEN="tcp:port=http"))
        self.assertEqual(await daemon.wait_exit(), 1)
        self.assertIn("LISTEN: must be a server endpoint such as tcp:8787", daemon.stderr)

    async def test_socket_activation(self):
        """With LISTEN=systemd:domain=INET:index=0 the daemon serves on the socket systemd (here systemd-socket-activate) passes."""
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed")
        port = free_port()
        env = self.env(LISTEN="systemd:domain=INET:index=0")
        argv = [activate, "--listen", f"127.0.0.1:{port}", "--fdname=http"]
        argv += [f"--setenv={name}={value}" for name, value in env.items()]
        argv += [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "smoltbot"]
        daemon = ChildProcess(argv, {"PATH": env["PATH"]})
        self.addCleanup(daemon.kill)
        for _ in range(200):
            if "Listening on" in daemon.stderr:
                break
            await deferLater(reactor, 0.05)
        code, body = await get_json(port, "/health/live")  # the first connection starts the daemon
        self.assertEqual((code, body["status"]), (200, "ok"))
        line = json.loads(await daemon.wait_for(started))
        self.assertIn(f"listening on 127.0.0.1:{port}", line["message"])
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)

    async def test_redis_unreachable_degrades(self):
        """REDIS_URL pointing at nothing: the gateway runs, readiness is 503 degraded with redis.ok false and a latency."""
        daemon = start_daemon(self, self.env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
        await daemon.wait_for(started)
        code, body = await self._ready_when(lambda b: "redis" in b.get("checks", {}))
        self.assertEqual((code, body["status"]), (503, "degraded"))
        self.assertFalse(body["checks"]["redis"]["ok"])
        self.assertIn("latencyMs", body["checks"]["redis"])
        code, _ = await get_json(self.port, "/health/live")
        self.assertEqual(code, 200)

    async def test_unwritable_spool_fails_readiness(self):
        """A spool folder that cannot be created makes readiness 503, naming the recorder's problem."""
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file where the spool folder should be")
        daemon = start_daemon(self, self.env(RECORDER_SPOOL_DIR=f"{blocker}/spool"))
        await daemon.wait_for(lambda r: "spool" in r["message"] and r["level"] == "error")
        code, body = await self._ready_when(lambda b: b.get("status") != "starting")
        self.assertEqual(code, 503)
        self.assertFalse(body["checks"]["recorder"]["ok"])
        self.assertIn("spool not writable", body["checks"]["recorder"]["error"])
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)

    async def test_spool_left_by_a_previous_run_is_replayed(self):
        """Started with records in its spool folder, the daemon writes them to PostgreSQL and deletes the spool."""
        dbname = await migrated_database()
        spool_dir = os.path.join(new_state_dir(), "spool")
        os.makedirs(spool_dir)
        with open(os.path.join(spool_dir, "00000000000000000001-1-1.jsonl"), "w") as f:
            f.write("".join(make_record(n).to_json() + "\n" for n in range(3)))
        env = self.env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{dbname}", RECORDER_SPOOL_DIR=spool_dir)
        daemon = start_daemon(self, env)
        await daemon.wait_for(lambda r: "replayed into PostgreSQL" in r["message"])
        self.assertEqual(os.listdir(spool_dir), [])
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT request_id FROM request_records ORDER BY 1")
                self.assertEqual(cursor.fetchall(), [("req-000000",), ("req-000001",), ("req-000002",)])
        finally:
            connection.close()

    async def test_database_down_at_start_then_recovers(self):
        """PostgreSQL unreachable at start: supabase.ok is false; once it is back, readiness recovers with no restart."""
        proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        proxy.mode = "refuse"
        proxy_port = await proxy.start()
        self.addCleanup(proxy.stop)
        dsn = self.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy_port}")
        daemon = start_daemon(self, self.env(DATABASE_URL=dsn))
        await daemon.wait_for(started)
        code, body = await self._ready_when(lambda b: "supabase" in b.get("checks", {}))
        self.assertEqual((code, body["checks"]["supabase"]["ok"]), (503, False))
        proxy.mode = "relay"
        code, body = await self._ready_when(lambda b: b["checks"].get("supabase", {}).get("ok"))
        self.assertEqual(code, 200)

    async def test_wrong_credentials_then_fixed(self):
        """PostgreSQL refusing the credentials: supabase.ok is false with the server's reason; once fixed, readiness recovers."""
        import uuid

        from tests.support import _admin

        role = f"smoltbot_role_{uuid.uuid4().hex[:8]}"
        dsn = self.database_url.replace("postgres@", f"{role}:secret-marker-789@")
        daemon = start_daemon(self, self.env(DATABASE_URL=dsn))
        await daemon.wait_for(started)
        code, body = await self._ready_when(lambda b: "supabase" in b.get("checks", {}))
        self.assertEqual((code, body["checks"]["supabase"]["ok"]), (503, False))
        self.assertIn(role, body["checks"]["supabase"]["error"])
        _admin(f'CREATE ROLE "{role}" LOGIN')
        self.addCleanup(_admin, f'DROP ROLE IF EXISTS "{role}"')
        code, body = await self._ready_when(lambda b: b["checks"].get("supabase", {}).get("ok"))
        self.assertEqual(code, 200)
        daemon.signal("TERM")
        await daemon.wait_exit()
        self.assertNotIn("secret-marker-789", "\n".join(daemon.lines) + daemon.stderr)

    async def test_license_expired_degrades_but_serves(self):
        """An expired license makes readiness 503 degraded with license_expired; other endpoints still answer."""
        import jwt

        token = jwt.encode({"license_id": "lic-1", "exp": int(time.time()) - 3600}, "k" * 32, algorithm="HS256")
        daemon = start_daemon(self, self.env(MNEMOM_LICENSE_JWT=token))
        await daemon.wait_for(started)
        code, body = await self._ready_when(lambda b: "license" in b.get("checks", {}))
        self.assertEqual((code, body["status"]), (503, "degraded"))
        self.assertEqual(body["checks"]["license"], {"ok": False, "warning": "license_expired"})
        self.assertEqual((await get_json(self.port, "/health"))[0], 200)
        self.assertNotIn(token, "\n".join(daemon.lines))

    async def test_malformed_license(self):
        """A malformed license is reported as license_parse_error."""
        daemon = start_daemon(self, self.env(MNEMOM_LICENSE_JWT="not-a-jwt"))
        await daemon.wait_for(started)
        code, body = await self._ready_when(lambda b: "license" in b.get("checks", {}))
        self.assertEqual(body["checks"]["license"], {"ok": False, "warning": "license_parse_error"})

    async def test_heartbeat_unreachable_and_failing(self):
        """An unreachable heartbeat endpoint and one answering 500 each give their warning and nothing else breaks."""
        daemon = start_daemon(self, self.env(HEARTBEAT_URL=f"http://127.0.0.1:{free_port()}/beat"))
        line = await daemon.wait_for(lambda r: r["message"].startswith("[heartbeat] Failed to send heartbeat: "))
        self.assertIn('"level": "warn"', line)

        class Failing(Resource):
            isLeaf = True

            def render_POST(self, request):
                request.setResponseCode(500)
                return b"no"

        server = reactor.listenTCP(0, Site(Failing()), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        other = start_daemon(self, self.env(HEARTBEAT_URL=f"http://127.0.0.1:{server.getHost().port}/beat"))
        line = await other.wait_for(lambda r: r["message"] == "[heartbeat] Server returned 500 \u2014 continuing operation")
        self.assertIn('"level": "warn"', line)

    async def test_debug_level(self):
        """LOG_LEVEL=debug shows debug lines, and every line is JSON with the four fields."""
        daemon = start_daemon(self, self.env(LOG_LEVEL="debug"))
        await daemon.wait_for(lambda r: r["level"] == "debug")
        await daemon.wait_for(started)
        daemon.signal("TERM")
        self.assertEqual(await daemon.wait_exit(), 0)
        self.assertTrue(all({"timestamp", "level", "service", "message"} <= set(r) for r in daemon.records))

    async def test_sigterm_drains_and_reports_draining(self):
        """On SIGTERM readiness says draining while the listener is still open, then the process exits 0 in time."""
        daemon = start_daemon(self, self.env(SHUTDOWN_DELAY_SECONDS="2", SHUTDOWN_DRAIN_TIMEOUT_SECONDS="5"))
        await daemon.wait_for(started)
        daemon.signal("TERM")
        await daemon.wait_for(lambda r: "draining" in r["message"])
        code, body = await get_json(self.port, "/health/ready")
        self.assertEqual((code, body["status"]), (503, "draining"))
        began = time.monotonic()
        self.assertEqual(await daemon.wait_exit(), 0)
        self.assertLess(time.monotonic() - began, 2 + 5 + 5)

    async def test_sigint_exits_zero(self):
        """SIGINT (Ctrl-C) drains and exits 0 as SIGTERM does."""
        daemon = start_daemon(self, self.env())
        await daemon.wait_for(started)
        daemon.signal("INT")
        self.assertEqual(await daemon.wait_exit(), 0)

    async def test_scheduler_role_serves_health(self):
        """The scheduler role serves /health/* and /metrics but not the provider paths."""
        daemon = start_daemon(self, self.env(), args=("--role", "scheduler"))
        await daemon.wait_for(started)
        self.assertEqual((await get_json(self.port, "/health/live"))[0], 200)
        self.assertEqual((await get_json(self.port, "/anthropic/v1/messages"))[0], 404)
        self.assertEqual(daemon.records[0]["service"], "smoltbot-scheduler")



class PluginTests(TestCase):
    """The twistd plugin as installed."""

    async def test_twistd_help_lists_smoltbot(self):
        """`twistd --help` lists the smoltbot plugin, and `twistd smoltbot --help` its options."""
        child = ChildProcess([str(BIN / "twistd"), "--help"], base_env())
        self.addCleanup(child.kill)
        self.assertEqual(await child.wait_exit(), 0)
        self.assertTrue(any(line.split()[:1] == ["smoltbot"] for line in child.lines), child.lines)
        child = ChildProcess([str(BIN / "twistd"), "smoltbot", "--help"], base_env())
        self.addCleanup(child.kill)
        await child.wait_exit()
        text = "\n".join(child.lines)
        for option in ("--role", "--port", "--host", "--listen"):
            self.assertIn(option, text)
