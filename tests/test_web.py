"""Tests for the HTTP surface: health endpoints, metrics, models, CORS, request ids, 404s, drain tracking."""

import json

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from smoltbot.health.probes import HealthState
from smoltbot.metrics import Metrics
from smoltbot.http.ops import OpsApi
from smoltbot.http.root import build_root
from smoltbot.http.site import GatewaySite, request_id_for


class _Held(Resource):
    """A provider stand-in that holds each request open until the test finishes it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return 1  # NOT_DONE_YET


class WebTests(TestCase):
    def setUp(self):
        self.health = HealthState()
        self.metrics = Metrics("9.9.9")
        self.held = _Held()
        ops = OpsApi(version="9.9.9", aip_enabled=True, health=self.health, metrics=self.metrics, clock=reactor, routes_providers=True)
        self.site = GatewaySite(build_root(ops, {"anthropic": self.held}), reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def get(self, path, **kwargs):
        response = await treq.request(kwargs.pop("method", "GET"), self.base + path, persistent=False, **kwargs)
        body = await response.content()
        return response, body

    async def test_health(self):
        """/health answers the gateway's own status, version and AIP flag."""
        response, body = await self.get("/health")
        data = json.loads(body)
        self.assertEqual(response.code, 200)
        self.assertEqual((data["status"], data["version"], data["aip_enabled"]), ("ok", "9.9.9", True))
        self.assertIn("timestamp", data)

    async def test_live(self):
        """/health/live is 200 ok whenever the reactor runs."""
        response, body = await self.get("/health/live")
        self.assertEqual((response.code, json.loads(body)["status"]), (200, "ok"))

    async def test_startup_flips(self):
        """/health/startup is 503 starting until the daemon has started, then 200."""
        response, body = await self.get("/health/startup")
        self.assertEqual((response.code, json.loads(body)), (503, {"status": "starting"}))
        self.health.started = True
        response, _ = await self.get("/health/startup")
        self.assertEqual(response.code, 200)

    async def test_ready_answers_latest_checks(self):
        """/health/ready reports the stored checks: 200 when all ok, 503 degraded otherwise."""
        self.health.checks = {"redis": {"ok": True, "latencyMs": 0.0, "mode": "memory"}, "supabase": {"ok": True, "latencyMs": 1.0}, "license": {"ok": True}}
        response, body = await self.get("/health/ready")
        self.assertEqual((response.code, json.loads(body)["status"]), (200, "ok"))
        self.health.checks["supabase"] = {"ok": False, "latencyMs": 3.0}
        response, body = await self.get("/health/ready")
        self.assertEqual((response.code, json.loads(body)["status"]), (503, "degraded"))

    async def test_metrics_exposition(self):
        """/metrics is Prometheus text with the contract's metric names and the build info."""
        response, body = await self.get("/metrics")
        text = body.decode()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        for name in (
            "gateway_requests_total",
            "gateway_request_duration_seconds",
            "gateway_aip_checks_total",
            "gateway_cache_operations_total",
            "gateway_background_tasks_total",
            "gateway_cron_runs_total",
            "gateway_time_to_first_byte_seconds",
            "gateway_requests_in_flight",
            "gateway_trace_queue_depth",
            "gateway_trace_spool_bytes",
            "gateway_traces_written_total",
            "gateway_traces_dropped_total",
            "gateway_tokens_total",
            "gateway_database_connections",
            "gateway_database_calls_waiting",
            "process_resident_memory_bytes",
            "python_info",
        ):
            self.assertIn(f"# TYPE {name.removesuffix('_total')}", text)
        self.assertIn('gateway_build_info{version="9.9.9"} 1.0', text)

    async def test_models(self):
        """/models.json lists models per provider with a cache header."""
        response, body = await self.get("/models.json")
        self.assertEqual(sorted(json.loads(body)), ["anthropic", "gemini", "openai"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["public, max-age=3600"])

    async def test_not_found(self):
        """Unknown paths get the JSON 404 with type not_found."""
        response, body = await self.get("/nope/deeper?x=1")
        data = json.loads(body)
        self.assertEqual(response.code, 404)
        self.assertEqual((data["error"], data["type"]), ("Not found", "not_found"))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

    async def test_wrong_method(self):
        """A POST to an operational endpoint is not routed: JSON 404."""
        response, body = await self.get("/health/live", method="POST")
        self.assertEqual((response.code, json.loads(body)["type"]), (404, "not_found"))

    async def test_cors_everywhere_and_preflight(self):
        """Every response carries CORS headers; OPTIONS on any path is a 204 preflight."""
        response, _ = await self.get("/health")
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        response, body = await self.get("/anthropic/v1/messages", method="OPTIONS")
        self.assertEqual((response.code, body), (204, b""))
        self.assertIn("x-smoltbot-agent", response.headers.getRawHeaders("access-control-expose-headers")[0])
        self.assertEqual(self.held.requests, [])

    async def test_request_id_kept_or_made(self):
        """A well-formed x-request-id is echoed as the gateway's id; a malformed one is replaced."""
        response, _ = await self.get("/health", headers={"x-request-id": "abc-123"})
        self.assertEqual(response.headers.getRawHeaders("x-smoltbot-request-id"), ["abc-123"])
        response, _ = await self.get("/health", headers={"x-request-id": "bad id!"})
        made = response.headers.getRawHeaders("x-smoltbot-request-id")[0]
        self.assertNotEqual(made, "bad id!")
        self.assertEqual(request_id_for(made.encode()), made)

    async def test_in_flight_tracked_until_finished(self):
        """A provider request counts as in flight until it finishes, and when_idle waits for it."""
        pending = defer.ensureDeferred(self.get("/anthropic/v1/messages"))
        while not self.held.requests:
            await deferLater0()
        self.assertEqual(self.site.in_flight, 1)
        idle = self.site.when_idle()
        self.assertNoResult(idle)
        self.held.requests[0].write(b"done")
        self.held.requests[0].finish()
        response, body = await pending
        self.assertEqual(body, b"done")
        await idle
        self.assertEqual(self.site.in_flight, 0)

    async def test_draining_closes_connections_after_response(self):
        """While draining, a keep-alive request is answered with Connection: close and the connection closes."""
        self.site.draining = True
        raw = await raw_exchange(self.port.getHost().port, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"connection: close", head)


class _Collect(Protocol):
    def connectionMade(self):
        self.data = b""
        self.transport.write(self.factory.payload)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.factory.done.callback(self.data)


def raw_exchange(port, payload):
    """Send raw bytes and collect everything the server sends until it closes the connection."""
    factory = ClientFactory.forProtocol(_Collect)
    factory.payload = payload
    factory.done = defer.Deferred()
    reactor.connectTCP("127.0.0.1", port, factory)
    return factory.done


def deferLater0():
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0)
