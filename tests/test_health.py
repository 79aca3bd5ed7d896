"""Tests for the readiness probes and the health state `/health/ready` answers from."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.health.probes import HealthState, ProbeService
from smoltbot.metrics import Metrics


class FakeDependency:
    """A pingable whose next answer the test decides: a latency, an error, or silence."""

    def __init__(self):
        self.answer = 1.5
        self.pending = []

    def ping(self):
        if self.answer == "hang":
            d = defer.Deferred()
            self.pending.append(d)
            return d
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)


class ProbeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.state = HealthState()
        self.metrics = Metrics("test")
        self.redis = FakeDependency()
        self.db = FakeDependency()
        self.license = {"ok": True}
        self.probes = ProbeService(
            self.state,
            clock=self.clock,
            metrics=self.metrics,
            kv=self.redis,
            kv_mode="redis",
            database=self.db,
            license_check=lambda: dict(self.license),
            interval=5,
            timeout=5,
        )

    def test_not_ready_before_first_round(self):
        """Before any probe has run, readiness is 503 starting."""
        self.assertEqual(self.state.readiness(), (503, {"status": "starting", "checks": {}}))

    def test_all_ok(self):
        """When every dependency answers, readiness is 200 ok in DESIGN §1.2's shape."""
        self.probes.startService()
        status, body = self.state.readiness()
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "status": "ok",
                "checks": {
                    "redis": {"ok": True, "latencyMs": 1.5, "mode": "redis"},
                    "supabase": {"ok": True, "latencyMs": 1.5},
                    "license": {"ok": True},
                },
            },
        )
        self.assertTrue(self.state.healthy)

    def test_failure_degrades_then_recovers_within_one_interval(self):
        """A failing database degrades readiness; once it answers again, the next round recovers."""
        self.db.answer = ConnectionRefusedError("Connection refused")
        self.probes.startService()
        status, body = self.state.readiness()
        self.assertEqual((status, body["status"]), (503, "degraded"))
        self.assertFalse(body["checks"]["supabase"]["ok"])
        self.assertIn("latencyMs", body["checks"]["supabase"])
        self.assertIn("refused", body["checks"]["supabase"]["error"])
        self.db.answer = 2.0
        self.clock.advance(5)
        self.assertEqual(self.state.readiness()[0], 200)

    def test_hung_dependency_times_out(self):
        """A dependency that never answers is judged failed after the timeout, with that latency."""
        self.redis.answer = "hang"
        self.probes.startService()
        self.assertEqual(self.state.checks, {})
        self.clock.advance(5)
        check = self.state.checks["redis"]
        self.assertEqual(check["ok"], False)
        self.assertEqual(check["latencyMs"], 5000.0)
        self.assertIn("no answer within 5s", check["error"])

    def test_license_warning_degrades(self):
        """A license warning makes readiness 503 degraded with the warning."""
        self.license = {"ok": False, "warning": "license_expired"}
        self.probes.startService()
        status, body = self.state.readiness()
        self.assertEqual((status, body["status"]), (503, "degraded"))
        self.assertEqual(body["checks"]["license"], {"ok": False, "warning": "license_expired"})

    def test_loop_survives_a_failing_round(self):
        """A probe round that raises is logged and the next round still runs."""
        calls = []

        def broken():
            calls.append(1)
            raise RuntimeError("boom")

        self.probes._license_check = broken
        self.probes.startService()
        self.clock.advance(5)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_draining(self):
        """During shutdown readiness is 503 draining."""
        self.probes.startService()
        self.state.draining = True
        self.assertEqual(self.state.readiness()[1]["status"], "draining")

    def test_metrics_follow_results(self):
        """Probe results are exported as gauges."""
        self.db.answer = ValueError("down")
        self.probes.startService()
        value = self.metrics.registry.get_sample_value("gateway_health_check_ok", {"check": "supabase"})
        self.assertEqual(value, 0)
        self.assertEqual(self.metrics.registry.get_sample_value("gateway_health_check_ok", {"check": "redis"}), 1)

    def test_in_process_checks(self):
        """A check added with add_check is read at each answer and fails readiness like a probe, but never replaces 'starting'."""
        recorder = {"ok": True, "queue": 3, "spoolBytes": 0}
        self.state.add_check("recorder", lambda: dict(recorder))
        self.assertEqual(self.state.readiness()[1]["status"], "starting")
        self.probes.startService()
        status, body = self.state.readiness()
        self.assertEqual((status, body["checks"]["recorder"]), (200, recorder))
        recorder["ok"] = False
        self.assertEqual(self.state.readiness()[0], 503)
        self.assertFalse(self.state.healthy)
