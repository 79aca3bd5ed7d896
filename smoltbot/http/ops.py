"""
The operational endpoints, served by Klein: `/health*`, `/metrics`, `/models.json`, and the
JSON 404 for every path nothing else serves.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

from smoltbot.health.probes import HealthState
from smoltbot.http.errors import error_body, write_json
from smoltbot.logs import format_timestamp
from smoltbot.metrics import Metrics
from smoltbot.models import KNOWN_MODELS


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
