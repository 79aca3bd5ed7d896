"""In-process tests of the daemon's lifecycle on a memory reactor: start, drain, shutdown order."""

import os

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from smoltbot.config import load_config
from smoltbot.app.lifecycle import GatewayService
from tests.support import InlineWorker, new_state_dir

ENV = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/none",
    "AIP_ENABLED": "false",
    "HEARTBEAT_URL": "",
    "SHUTDOWN_DRAIN_TIMEOUT_SECONDS": "10",
    "SMOLTBOT_STATE_DIR": new_state_dir(),
}


class _Held(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class _WithHeldProvider(GatewayService):
    def _provider_resources(self):
        self.held = _Held()
        return {"anthropic": self.held}

    def _spool_worker(self):
        return InlineWorker()


class LifecycleTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.service = _WithHeldProvider(load_config({**ENV, "SHUTDOWN_DELAY_SECONDS": "2"}), self.reactor)
        self.service.startService()
        self.reactor.run()  # fires callWhenRunning hooks: the daemon announces itself as started

    def connect(self):
        protocol = self.service.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def hold_request(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
        return self.service.held.requests[-1], transport

    def test_started_after_reactor_runs(self):
        """The listener is bound and startup reports started once the reactor runs."""
        self.assertTrue(self.service.health.started)
        self.assertEqual(self.reactor.tcpServers[0][0], 8787)

    def test_drain_waits_for_in_flight_then_stops(self):
        """Shutdown reports draining, keeps listening for the delay, then waits for the request in flight."""
        request, transport = self.hold_request()
        closed = []
        self.patch(self.service.port, "stopListening", lambda: closed.append(True))
        stopping = self.service.stopService()
        self.assertTrue(self.service.health.draining)
        self.assertEqual(self.service.health.readiness()[1]["status"], "draining")
        self.reactor.advance(1.9)
        self.assertEqual(closed, [])
        self.reactor.advance(0.1)
        self.assertEqual(closed, [True])
        self.assertNoResult(stopping)
        request.write(b"{}")
        request.finish()
        self.reactor.advance(0)
        self.successResultOf(stopping)
        self.assertIn(b"HTTP/1.1 200", transport.value())
        self.assertIn(b"connection: close", transport.value().lower())

    def test_drain_timeout_cuts_remaining_requests(self):
        """Requests still in flight when the drain timeout passes get their connections cut, and shutdown completes."""
        request, transport = self.hold_request()
        stopping = self.service.stopService()
        self.reactor.advance(2)
        self.reactor.advance(9.9)
        self.assertNoResult(stopping)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
        request.connectionLost(Exception("aborted"))
        self.reactor.advance(0)
        self.successResultOf(stopping)
        self.assertFalse(self.service.running)

    def test_recorder_and_agents_wired(self):
        """A gateway role exposes the recorder and agent registry, and readiness reports the recorder's backlog."""
        self.assertTrue(self.service.recorder.running)
        self.assertTrue(self.service.agents.running)
        self.assertIn(str(os.getpid()), self.service.instance_id)
        self.service.health.checks = {"supabase": {"ok": True}}
        status, body = self.service.health.readiness()
        self.assertEqual((status, body["checks"]["recorder"]), (200, {"ok": True, "queue": 0, "spoolBytes": 0}))

    def test_children_stop_one_after_the_other(self):
        """The database is stopped only once the recorder has finished stopping (it may still be writing to it)."""
        recorder_stopped = Deferred()
        self.patch(self.service.recorder, "stopService", lambda: recorder_stopped)
        stopping = self.service.stopService()
        self.reactor.advance(2)
        self.assertTrue(self.service.database.running)
        self.assertNoResult(stopping)
        recorder_stopped.callback(None)
        self.successResultOf(stopping)
        self.assertFalse(self.service.database.running)


class SchedulerRoleTests(SynchronousTestCase):
    def test_no_recorder(self):
        """The scheduler role serves no traffic, so it has neither recorder nor agent registry."""
        service = GatewayService(load_config({**ENV, "SMOLTBOT_ROLE": "scheduler"}), MemoryReactorClock())
        self.assertIsNone(service.recorder)
        self.assertIsNone(service.agents)
        self.assertNotIn("recorder", service.health.current())

