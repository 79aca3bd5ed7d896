"""In-process tests of the daemon's composition and lifecycle on a memory reactor: parts, start, drain, shutdown order."""

import errno
import os

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from smoltbot.app.compose import build, build_service
from smoltbot.app.lifecycle import StartupError
from smoltbot.config import load_config
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


class LifecycleTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.held = _Held()
        self.service = build_service(
            load_config({**ENV, "SHUTDOWN_DELAY_SECONDS": "2"}),
            self.reactor,
            replace={"spool_worker": InlineWorker(), "provider_resources": {"anthropic": self.held}},
        )
        self.parts = self.service.parts
        self.service.startService()
        self.reactor.run()  # fires callWhenRunning hooks: the daemon announces itself as started

    def connect(self):
        protocol = self.parts.http.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def hold_request(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
        return self.held.requests[-1], transport

    def test_started_after_reactor_runs(self):
        """The listener is bound and startup reports started once the reactor runs."""
        self.assertTrue(self.parts.health.state.started)
        self.assertEqual(self.reactor.tcpServers[0][0], 8787)

    def test_drain_waits_for_in_flight_then_stops(self):
        """Shutdown reports draining, keeps listening for the delay, then waits for the request in flight."""
        request, transport = self.hold_request()
        closed = []
        self.patch(self.service.port, "stopListening", lambda: closed.append(True))
        stopping = self.service.stopService()
        self.assertTrue(self.parts.health.state.draining)
        self.assertEqual(self.parts.health.state.readiness()[1]["status"], "draining")
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
        self.assertTrue(self.parts.records.recorder.running)
        self.assertTrue(self.parts.records.agents.running)
        self.assertIn(str(os.getpid()), self.parts.records.instance_id)
        self.parts.health.state.checks = {"supabase": {"ok": True}}
        status, body = self.parts.health.state.readiness()
        self.assertEqual((status, body["checks"]["recorder"]), (200, {"ok": True, "queue": 0, "spoolBytes": 0}))

    def test_children_stop_one_after_the_other(self):
        """The database is stopped only once the recorder has finished stopping (it may still be writing to it)."""
        recorder_stopped = Deferred()
        self.patch(self.parts.records.recorder, "stopService", lambda: recorder_stopped)
        stopping = self.service.stopService()
        self.reactor.advance(2)
        self.assertTrue(self.parts.store.database.running)
        self.assertNoResult(stopping)
        recorder_stopped.callback(None)
        self.successResultOf(stopping)
        self.assertFalse(self.parts.store.database.running)



class CompositionTests(SynchronousTestCase):
    """`build` makes the parts each role and setting calls for, each feature once."""

    def build(self, **env):
        return build(load_config({**ENV, **env}), MemoryReactorClock(), replace={"spool_worker": InlineWorker()})

    def test_start_order(self):
        """Services start store first, then records, then health: the recorder stops before the pool it writes to."""
        parts = self.build(HEARTBEAT_URL="https://beat.example/v1")
        self.assertEqual(
            [type(service).__name__ for service in parts.services],
            ["Database", "MemoryKV", "AgentRegistry", "Recorder", "LicenseMonitor", "ProbeService", "HeartbeatService"],
        )

    def test_records_plug_into_the_proxy(self):
        """The records feature adds the recorder's readiness check and observes the proxy's exchanges."""
        parts = self.build()
        self.assertIn("recorder", parts.health.state.current())
        self.assertEqual(parts.records.sinks, (parts.http.proxy.observe,))

    def test_scheduler_role(self):
        """The scheduler role serves no traffic, so it has neither records nor proxy, but health and the ops API."""
        parts = self.build(SMOLTBOT_ROLE="scheduler")
        self.assertIsNone(parts.records)
        self.assertIsNone(parts.http.proxy)
        self.assertNotIn("recorder", parts.health.state.current())
        self.assertEqual([type(s).__name__ for s in parts.services], ["Database", "MemoryKV", "LicenseMonitor", "ProbeService"])

    def test_recorder_disabled(self):
        """RECORDER_ENABLED=false leaves the records feature out; the proxy runs without an observer."""
        parts = self.build(SMOLTBOT_ROLE="gateway", RECORDER_ENABLED="false")
        self.assertIsNone(parts.records)
        self.assertIsNone(parts.http.proxy.observe)

    def test_unknown_replacement_refused(self):
        """A replacement for a part that is not a seam is refused, naming the seams."""
        with self.assertRaises(ValueError) as raised:
            build(load_config(ENV), MemoryReactorClock(), replace={"spool_wroker": InlineWorker()})
        self.assertIn("spool_wroker", str(raised.exception))
        self.assertIn("spool_worker", str(raised.exception))


class _Endpoint:
    """A server endpoint whose `listen` returns the Deferred given."""

    def __init__(self, result):
        self.result = result

    def listen(self, factory):
        return self.result


def _in_use(interface, port):
    return CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))


class ListenerTests(SynchronousTestCase):
    """Binding the listener: one clear line when it fails, the address it got when it works."""

    def service(self, endpoint, **env):
        return build_service(
            load_config({**ENV, **env}), MemoryReactorClock(), replace={"spool_worker": InlineWorker(), "endpoint": endpoint}
        )

    def test_port_in_use(self):
        """A TCP port in use gives the contract's line, naming PORT; or LISTEN when that placed the listener."""
        service = self.service(_Endpoint(fail(_in_use("127.0.0.1", 8787))))
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "listen EADDRINUSE: address already in use 127.0.0.1:8787 (set PORT, or stop the process using it: lsof -i :8787)",
        )
        service = self.service(_Endpoint(fail(_in_use("::", 8787))), LISTEN="tcp6:8787:interface=\\:\\:")
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        self.assertIn("address already in use [::]:8787 (set LISTEN,", str(raised.exception))

    def test_unix_socket_in_use(self):
        """A UNIX socket path in use is named as a path."""
        service = self.service(_Endpoint(fail(_in_use(None, "/run/x.sock"))), LISTEN="unix:/run/x.sock")
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "listen EADDRINUSE: address already in use /run/x.sock (set LISTEN, or stop the process using it: lsof /run/x.sock)",
        )

    def test_other_failure(self):
        """A failure other than a refused bind (an adopted socket that is not there) is one line too."""
        service = self.service(_Endpoint(fail(OSError(errno.EBADF, "Bad file descriptor"))), LISTEN="unix:/run/x.sock")
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        self.assertEqual(str(raised.exception), "listen failed on unix:/run/x.sock: [Errno 9] Bad file descriptor (check LISTEN)")

    def test_endpoint_must_listen_at_once(self):
        """An endpoint that does not listen synchronously is refused at start rather than left to fail later."""
        service = self.service(_Endpoint(Deferred()), LISTEN="unix:/run/x.sock")
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        self.assertIn("does not listen at once", str(raised.exception))

    def test_announces_bound_address(self):
        """The startup line names the address the listener got (the port chosen for port 0)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service = self.service(_Endpoint(succeed(_BoundPort(IPv4Address("TCP", "127.0.0.1", 40123)))))
        service.startService()
        service._reactor.run()
        started = [e for e in events if "starting" in e["log_format"]][0]
        self.assertEqual((started["address"], started["host"], started["port"]), ("127.0.0.1:40123", "127.0.0.1", 40123))
        self.assertEqual(service.listening_port, 40123)


class _BoundPort:
    def __init__(self, address):
        self.address = address

    def getHost(self):
        return self.address

    def stopListening(self):
        return succeed(None)
