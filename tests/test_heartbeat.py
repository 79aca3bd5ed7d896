"""Tests for smoltbot.health.heartbeat: schedule, body, fail-open handling, timeouts and metrics."""

import json
import platform
import sys

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import provider

from smoltbot.health.heartbeat import HeartbeatService
from smoltbot.metrics import Metrics

LICENSE = "eyJhbGciOiJIUzI1NiJ9.eyJsaWNlbnNlX2lkIjoibGljXzEifQ.c2lnbmF0dXJl"
QUERY_SECRET = "query-secret-7c1f"
START = 1_800_000_000.0


class _Endpoint(Resource):
    """A heartbeat receiver answering `status`; with `hang` it never finishes (after `partial`, if given)."""

    isLeaf = True

    def __init__(self, status: int = 200, hang: bool = False, partial: bytes = b"") -> None:
        super().__init__()
        self.status = status
        self.hang = hang
        self.partial = partial
        self.received: list[tuple[dict, dict]] = []
        self.pending: list = []
        self.arrived: Deferred[None] = Deferred()

    def render_POST(self, request):
        headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.received.append((headers, json.loads(request.content.read())))
        if self.hang:
            self.pending.append(request)
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.hang:
            if self.partial:
                request.write(self.partial)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return b'{"received": true}'


class _HeartbeatCase:
    """Builds a HeartbeatService on a fake clock and captures log events and metrics."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.metrics = Metrics("1.2.3")
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.health = "healthy"

    def _service(self, http_client, *, url="http://heartbeat.test/v1/beat", license_jwt=LICENSE, **options):
        service = HeartbeatService(
            url,
            license_jwt=license_jwt,
            deployment_id="selfhosted-test",
            version="1.2.3",
            reactor=self.clock,
            http_client=http_client,
            health_status=self._health_status,
            metrics=self.metrics,
            started_at=START - 42,
            **options,
        )
        self.addCleanup(service.stopService)
        return service

    def _health_status(self) -> str:
        if self.health is None:
            raise RuntimeError("readiness probes unavailable")
        return self.health

    def _count(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("gateway_heartbeats_total", {"result": result}) or 0

    def _messages(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace", "").startswith("smoltbot")]

    def _assert_no_secrets_logged(self) -> None:
        for event in self.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(LICENSE, text)
            self.assertNotIn(QUERY_SECRET, text)


class HeartbeatTests(_HeartbeatCase, SynchronousTestCase):
    """In-memory HTTP (StubTreq) with the schedule driven by a fake clock."""

    def test_schedule(self) -> None:
        """The first beat goes out at start and then one every interval."""
        endpoint = _Endpoint()
        self._service(StubTreq(endpoint), interval=60).startService()
        self.assertEqual(len(endpoint.received), 1)
        self.clock.advance(59)
        self.assertEqual(len(endpoint.received), 1)
        self.clock.pump([1, 60, 60])
        self.assertEqual(len(endpoint.received), 4)
        self.assertEqual(self._count("ok"), 4)
        self.assertEqual(self._messages(), [])

    def test_body_and_headers(self) -> None:
        """The body follows reference §8.5 and the license travels as a bearer token."""
        endpoint = _Endpoint()
        self.health = "degraded"
        self._service(StubTreq(endpoint)).startService()
        [(headers, body)] = endpoint.received
        self.assertEqual(headers["content-type"], ["application/json"])
        self.assertEqual(headers["authorization"], [f"Bearer {LICENSE}"])
        memory = body["heartbeat_data"].pop("memory_usage_mb")
        self.assertIsInstance(memory, float)
        self.assertGreater(memory, 1)
        self.assertEqual(
            body,
            {
                "deployment_id": "selfhosted-test",
                "license_jwt": LICENSE,
                "version": "1.2.3",
                "heartbeat_data": {
                    "uptime_seconds": 42,
                    "health_status": "degraded",
                    "python_version": platform.python_version(),
                    "platform": sys.platform,
                },
                "timestamp": "2027-01-15T08:00:00.000Z",
            },
        )

    def test_without_license(self) -> None:
        """Without a license the body says null and no Authorization header is sent."""
        endpoint = _Endpoint()
        self._service(StubTreq(endpoint), license_jwt=None).startService()
        [(headers, body)] = endpoint.received
        self.assertNotIn("authorization", headers)
        self.assertIsNone(body["license_jwt"])

    def test_server_error(self) -> None:
        """A 500 is logged with the exact warning, counted as http_error, and the schedule goes on."""
        endpoint = _Endpoint(status=500)
        self._service(StubTreq(endpoint)).startService()
        self.clock.advance(60)
        self.assertEqual(len(endpoint.received), 2)
        self.assertEqual(self._messages(), ["[heartbeat] Server returned 500 \u2014 continuing operation"] * 2)
        self.assertEqual((self._count("http_error"), self._count("ok")), (2, 0))
        self._assert_no_secrets_logged()

    def test_redirect_not_followed(self) -> None:
        """A redirect is reported as a non-2xx status, so the license never travels to another host."""
        endpoint = _Endpoint(status=302)
        self._service(StubTreq(endpoint)).startService()
        self.assertEqual(self._messages(), ["[heartbeat] Server returned 302 \u2014 continuing operation"])

    def test_hung_server(self) -> None:
        """A server that never answers times out, and beats due meanwhile are skipped, not stacked."""
        endpoint = _Endpoint(hang=True)
        url = f"http://heartbeat.test/v1/beat?token={QUERY_SECRET}"
        self._service(StubTreq(endpoint), url=url, interval=4, timeout=10).startService()
        self.clock.pump([4, 4])
        self.assertEqual(len(endpoint.received), 1)
        self.clock.advance(2)
        self.assertEqual(self._count("failed"), 1)
        self.clock.advance(2)
        self.assertEqual(len(endpoint.received), 2)
        skipped = "[heartbeat] Previous heartbeat still in flight; skipping this one"
        self.assertEqual(
            self._messages(),
            [skipped, skipped, "[heartbeat] Failed to send heartbeat: TimeoutError: no response within 10 s"],
        )
        self._assert_no_secrets_logged()

    def test_stalled_body(self) -> None:
        """A server that stalls in the middle of its body times out too, and its connection is dropped."""
        endpoint = _Endpoint(hang=True, partial=b"partial")
        stub = StubTreq(endpoint)
        self._service(stub).startService()
        [request] = endpoint.pending
        gone = request.notifyFinish()
        self.clock.advance(10)
        stub.flush()
        self.failureResultOf(gone)
        timed_out = "[heartbeat] Failed to send heartbeat: TimeoutError: no response within 10 s"
        self.assertEqual((self._messages(), self._count("failed")), ([timed_out], 1))

    def test_stop_cancels_in_flight(self) -> None:
        """Stopping the service abandons the beat in flight quietly and sends no more."""
        endpoint = _Endpoint(hang=True)
        service = self._service(StubTreq(endpoint))
        service.startService()
        service.stopService()
        self.clock.advance(600)
        self.assertEqual(len(endpoint.received), 1)
        self.assertEqual((self._messages(), self._count("failed")), ([], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unexpected_error_keeps_looping(self) -> None:
        """A run that raises is logged and counted as failed, and the next beat still goes out."""
        endpoint = _Endpoint()
        self.health = None
        self._service(StubTreq(endpoint)).startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((len(endpoint.received), self._count("failed")), (0, 1))
        self.health = "healthy"
        self.clock.advance(60)
        self.assertEqual((len(endpoint.received), self._count("ok")), (1, 1))


class HeartbeatNetworkTests(_HeartbeatCase, TestCase):
    """A real treq client over loopback TCP; the schedule and timeout still run on a fake clock."""

    def _client(self) -> HTTPClient:
        return HTTPClient(Agent(reactor))

    def _logged(self, fragment: str) -> Deferred:
        """Fire with the first log event whose text contains `fragment`."""
        seen: Deferred = Deferred()

        @provider(ILogObserver)
        def observe(event) -> None:
            if not seen.called and fragment in formatEvent(event):
                seen.callback(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return seen

    async def test_connection_refused(self) -> None:
        """An unreachable server gives the failure warning naming the error, and counts as failed."""
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        warned = self._logged("[heartbeat] Failed to send heartbeat")
        url = f"http://127.0.0.1:{number}/v1/beat?token={QUERY_SECRET}"
        self._service(self._client(), url=url).startService()
        event = await warned
        self.assertTrue(formatEvent(event).startswith("[heartbeat] Failed to send heartbeat: ConnectionRefusedError: "))
        self.assertEqual(self._count("failed"), 1)
        self._assert_no_secrets_logged()

    async def test_hung_server_connection_dropped(self) -> None:
        """On timeout the client drops the connection to a server that never answered."""
        endpoint = _Endpoint(hang=True)
        port = reactor.listenTCP(0, Site(endpoint), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self._service(self._client(), url=f"http://127.0.0.1:{port.getHost().port}/v1/beat").startService()
        await endpoint.arrived
        [request] = endpoint.pending
        gone = request.notifyFinish()
        self.clock.advance(10)
        await self.assertFailure(gone, Exception)
        timed_out = "[heartbeat] Failed to send heartbeat: TimeoutError: no response within 10 s"
        self.assertEqual((self._messages(), self._count("failed")), ([timed_out], 1))
