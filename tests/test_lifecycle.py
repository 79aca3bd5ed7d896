"""In-process tests of the daemon's lifecycle on a memory reactor: start, drain, shutdown order."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from smoltbot.config import load_config
from smoltbot.daemon import GatewayService

ENV = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/none",
    "AIP_ENABLED": "false",
    "HEARTBEAT_URL": "",
    "SHUTDOWN_DRAIN_TIMEOUT_SECONDS": "10",
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
