"""
The HTTP surface: the site and request classes, routing, CORS, JSON errors, and the operational
endpoints (`/health*`, `/metrics`, `/models.json`).

Provider paths (`/anthropic`, `/openai`, `/gemini`) are dispatched by `GatewayRoot` straight to
the provider resources, beside the Klein app that serves everything else, so the hot path
pays for no routing table.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any, Mapping

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource, Resource

from smoltbot.health import HealthState
from smoltbot.logs import format_timestamp
from smoltbot.metrics import Metrics
from smoltbot.models import KNOWN_MODELS

DEFAULT_MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024

_REQUEST_ID = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9._-]{1,64})$"
)

CORS_HEADERS: Mapping[bytes, bytes] = {
    b"access-control-allow-origin": b"*",
    b"access-control-allow-methods": b"GET, POST, PUT, PATCH, DELETE, OPTIONS",
    b"access-control-allow-headers": (
        b"Content-Type, x-api-key, anthropic-version, anthropic-beta, authorization, x-goog-api-key, "
        b"x-mnemom-api-key, x-request-id"
    ),
    b"access-control-expose-headers": (
        b"x-smoltbot-agent, x-smoltbot-session, x-smoltbot-request-id, x-request-id, X-AIP-Verdict, "
        b"X-AIP-Checkpoint-Id, X-AIP-Action, X-AIP-Proceed, X-AIP-Synthetic, X-AIP-Certificate-Id, "
        b"X-AIP-Chain-Hash, X-AIP-Enforcement, X-AIP-Nudge-Count"
    ),
    b"access-control-max-age": b"86400",
}


def request_id_for(incoming: bytes | None) -> str:
    """Keep a well-formed incoming `x-request-id` (a UUID or a short token); otherwise make one."""
    if incoming:
        try:
            candidate = incoming.decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        if _REQUEST_ID.match(candidate):
            return candidate
    return str(uuid.uuid4())


def write_json(request: server.Request, status: int, body: Mapping[str, Any]) -> bytes:
    """Set status and JSON content type on `request` and return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def error_body(request: server.Request, status: int, error_type: str, error: str, message: str) -> bytes:
    """A gateway-made error: `{"error","type","message"}` with a stable `type` (DESIGN §1.2)."""
    return write_json(request, status, {"error": error, "type": error_type, "message": message})


class GatewayRequest(server.Request):
    """
    A request that carries the gateway's request id and tells its site when it is in flight,
    so shutdown can wait for it. Its body is kept in memory and capped: a body over the site's
    `max_request_body_bytes` gets a 413 as soon as its length is known, and the connection closes.
    """

    log = Logger()
    request_id: str = ""
    _body_refused = False
    _body_size = 0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self._body_limit():
            self._refuse_body(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_size += len(data)
        if self._body_size > self._body_limit():
            self._refuse_body(None)
            return
        self.content.write(data)

    def _body_limit(self) -> int:
        return getattr(self.channel.site, "max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY_BYTES)

    def _refuse_body(self, length: int | None) -> None:
        """Answer 413 before reading the body (twisted.web has not parsed the request line yet)."""
        self._body_refused = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
        limit = self._body_limit()
        request_id = request_id_for(self.requestHeaders.getRawHeaders(b"x-request-id", [None])[0])
        body = json.dumps(
            {
                "error": "Request too large",
                "type": "request_too_large",
                "message": f"The request body is larger than the gateway's limit of {limit} bytes.",
            },
            separators=(",", ":"),
        ).encode("utf-8")
        head = [b"HTTP/1.1 413 Request Entity Too Large"]
        head += [name + b": " + value for name, value in CORS_HEADERS.items()]
        rid = request_id.encode("ascii")
        head += [
            b"x-smoltbot-request-id: " + rid,
            b"x-request-id: " + rid,
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        self.log.info(
            "refused a request body of {length} bytes (limit {limit})",
            length=length if length is not None else self._body_size,
            limit=limit,
            status=413,
            request_id=request_id,
        )
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.loseConnection()

    def process(self) -> None:
        if self._body_refused:
            return  # answered with a 413 already; the connection is closing
        self.request_id = request_id_for(self.requestHeaders.getRawHeaders(b"x-request-id", [None])[0])
        headers = self.responseHeaders
        for name, value in CORS_HEADERS.items():
            headers.setRawHeaders(name, [value])
        rid = self.request_id.encode("ascii")
        headers.setRawHeaders(b"x-smoltbot-request-id", [rid])
        headers.setRawHeaders(b"x-request-id", [rid])
        site = self.channel.site
        if isinstance(site, GatewaySite):
            site.track(self)
            if site.draining:
                # Finish this request, then let the client reconnect elsewhere.
                headers.setRawHeaders(b"connection", [b"close"])
                self.channel.persistent = False
        super().process()


class GatewaySite(server.Site):
    """The HTTP site: quiet factory, gateway requests, and a count of requests in flight."""

    requestFactory = GatewayRequest
    noisy = False

    def __init__(
        self,
        resource: IResource,
        reactor: IReactorTime,
        max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, reactor=reactor, **kwargs)
        self.max_request_body_bytes = max_request_body_bytes
        self._in_flight: set[GatewayRequest] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.draining = False

    @property
    def in_flight(self) -> int:
        """Requests received and not yet finished or abandoned."""
        return len(self._in_flight)

    def track(self, request: GatewayRequest) -> None:
        """Count `request` as in flight until it finishes or its client goes away."""
        self._in_flight.add(request)
        request.notifyFinish().addBoth(self._untrack, request)

    def _untrack(self, result: object, request: GatewayRequest) -> None:
        self._in_flight.discard(request)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def log(self, request: server.Request) -> None:
        """Replace twisted.web's combined-format access line: the proxy logs its own structured one."""

    def begin_draining(self) -> None:
        """From now on every response closes its connection, including those of requests in flight."""
        self.draining = True
        for request in self._in_flight:
            if request.channel is not None:
                # A response already under way (a stream) cannot say so, but still ends with a close.
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
                request.channel.persistent = False

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no request is in flight (at once if none is)."""
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def abort_in_flight(self) -> None:
        """Cut the connections of requests still in flight (the drain timeout has passed)."""
        for request in list(self._in_flight):
            transport = request.channel.transport if request.channel is not None else None
            if transport is not None:
                transport.abortConnection()


class GatewayRoot(Resource):
    """
    The root resource: CORS preflight for any path, provider paths to their resources, and
    everything else to the operational Klein app.
    """

    def __init__(self, ops: IResource, providers: Mapping[str, IResource] | None = None) -> None:
        super().__init__()
        self._ops = ops
        self._providers = {name.encode("ascii"): resource for name, resource in (providers or {}).items()}

    def getChildWithDefault(self, path: bytes, request: server.Request) -> IResource:
        if request.method == b"OPTIONS":
            return _Preflight()
        provider = self._providers.get(path)
        if provider is not None:
            return provider
        # Hand the whole path to Klein, which routes from the site root.
        request.postpath.insert(0, request.prepath.pop())
        return self._ops

    def render(self, request: server.Request) -> bytes:
        if request.method == b"OPTIONS":
            return _Preflight().render(request)
        return self._ops.render(request)


class _Preflight(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(204)
        return b""


class OpsApi:
    """`/health*`, `/metrics`, `/models.json` and the JSON 404 for everything else."""

    app = Klein()

    def __init__(
        self,
        *,
        version: str,
        aip_enabled: bool,
        health: HealthState,
        metrics: Metrics,
        clock: IReactorTime,
        routes_providers: bool,
    ) -> None:
        self._version = version
        self._aip_enabled = aip_enabled
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._routes_providers = routes_providers

    def resource(self) -> IResource:
        """The Klein resource serving these routes."""
        return self.app.resource()

    def _now(self) -> str:
        return format_timestamp(self._clock.seconds())

    @app.route("/health", methods=["GET", "HEAD"])
    @app.route("/health/", methods=["GET", "HEAD"])
    def health(self, request: server.Request) -> bytes:
        return write_json(
            request,
            200,
            {"status": "ok", "version": self._version, "timestamp": self._now(), "aip_enabled": self._aip_enabled},
        )

    @app.route("/health/live", methods=["GET", "HEAD"])
    def live(self, request: server.Request) -> bytes:
        return write_json(request, 200, {"status": "ok", "timestamp": self._now()})

    @app.route("/health/startup", methods=["GET", "HEAD"])
    def startup(self, request: server.Request) -> bytes:
        if not self._health.started:
            return write_json(request, 503, {"status": "starting"})
        return write_json(request, 200, {"status": "ok", "timestamp": self._now()})

    @app.route("/health/ready", methods=["GET", "HEAD"])
    def ready(self, request: server.Request) -> bytes:
        status, body = self._health.readiness()
        body["timestamp"] = self._now()
        return write_json(request, status, body)

    @app.route("/metrics", methods=["GET", "HEAD"])
    def metrics(self, request: server.Request) -> bytes:
        body, content_type = self._metrics.render(
            (request.requestHeaders.getRawHeaders(b"accept", [b""])[0] or b"").decode("latin-1")
        )
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    @app.route("/models.json", methods=["GET", "HEAD"])
    def models(self, request: server.Request) -> bytes:
        request.setHeader(b"cache-control", b"public, max-age=3600")
        return write_json(request, 200, KNOWN_MODELS)

    @app.route("/", branch=True)
    def not_found(self, request: server.Request) -> bytes:
        handled = "/health, /metrics, /models.json"
        if self._routes_providers:
            handled = "/health, /anthropic/*, /openai/*, and /gemini/*"
        return error_body(request, 404, "not_found", "Not found", f"This gateway handles {handled} endpoints")

    @app.handle_errors(Exception)
    def internal_error(self, request: server.Request, failure: Any) -> bytes:
        Logger().failure("unhandled error serving {path}", failure=failure, path=request.path.decode("latin-1"))
        return error_body(request, 500, "gateway_error", "Internal gateway error", "unexpected error; see the gateway log")


def build_root(
    ops: OpsApi, providers: Mapping[str, IResource] | None = None
) -> GatewayRoot:
    """The resource tree: provider resources (if this role serves them) beside the ops app."""
    return GatewayRoot(ops.resource(), providers)

