"""
The provider proxy as the HTTP surface sees it: one `ProviderResource` per provider, sharing
one `ProviderProxy` that checks each request (path, provider key, concurrency cap), identifies
the agent, sends the request upstream, hands the rest to a `Relay`, and at the end counts it
in the metrics and writes its access-log line.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from smoltbot.config import Config
from smoltbot.identity import KEY_SOURCES, identify, provider_key
from smoltbot.metrics import Metrics
from smoltbot.proxy.exchange import Exchange, ObserverFactory
from smoltbot.proxy.headers import upstream_request_headers
from smoltbot.proxy.relay import Relay
from smoltbot.proxy.routing import Upstream, UnsafePath, split_provider_uri
from smoltbot.proxy.upstream import UpstreamClient
from smoltbot.http.errors import error_body


class _ProviderMetrics:
    """One provider's metric children, bound once so a request pays no label lookups."""

    def __init__(self, metrics: Metrics, provider: str) -> None:
        self._requests = metrics.requests
        self._provider = provider
        self._by_status: dict[int, Any] = {}
        self.duration = metrics.request_duration.labels(provider)
        self.ttfb = metrics.time_to_first_byte.labels(provider)
        self.in_flight = metrics.requests_in_flight.labels(provider)
        self.bytes_in = metrics.request_bytes.labels(provider)
        self.bytes_out = metrics.response_bytes.labels(provider)

    def requests(self, status: int) -> Any:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(self._provider, str(status))
        return counter


class ProviderProxy:
    """
    Everything the three provider resources share: upstreams, the HTTP client, limits,
    timeouts, metrics, and the optional exchange observer factory.
    """

    log = Logger()

    def __init__(
        self,
        *,
        upstreams: Mapping[str, str],
        client: UpstreamClient,
        clock: IReactorTime,
        metrics: Metrics,
        max_concurrent_requests: int,
        ttfb_timeout: float,
        idle_timeout: float,
        observe: ObserverFactory | None = None,
    ) -> None:
        self._upstreams = {provider: Upstream.from_url(url) for provider, url in upstreams.items()}
        self.client = client
        self._clock = clock
        self._metrics = {provider: _ProviderMetrics(metrics, provider) for provider in upstreams}
        self._max_concurrent = max_concurrent_requests
        self._ttfb_timeout = ttfb_timeout
        self._idle_timeout = idle_timeout
        self.observe = observe
        self.in_flight = 0

    @classmethod
    def from_config(cls, config: Config, reactor: Any, metrics: Metrics, observe: ObserverFactory | None = None) -> ProviderProxy:
        """The proxy a daemon runs with `config`: its upstreams, pool, limits and timeouts."""
        client = UpstreamClient(
            reactor,
            max_connections_per_host=config.proxy.max_connections_per_host,
            keepalive_timeout=config.proxy.keepalive_timeout,
            connect_timeout=config.proxy.connect_timeout,
        )
        return cls(
            upstreams=config.proxy.upstreams,
            client=client,
            clock=reactor,
            metrics=metrics,
            max_concurrent_requests=config.proxy.max_concurrent_requests,
            ttfb_timeout=config.proxy.ttfb_timeout,
            idle_timeout=config.proxy.idle_timeout,
            observe=observe,
        )

    def resources(self) -> dict[str, IResource]:
        """One resource per provider, to mount at `/<provider>`."""
        return {provider: ProviderResource(provider, self) for provider in self._upstreams}

    def close(self) -> Deferred[None]:
        """Close the idle upstream connections (call after the in-flight requests have drained)."""
        return self.client.close()

    def handle(self, provider: str, request: Request) -> bytes | int:
        """Serve one request for `provider`: answer it at once, or start proxying it."""
        exchange = Exchange(
            provider, request.method.decode("ascii", "replace"), "", getattr(request, "request_id", ""), self._clock.seconds()
        )
        observer = None
        try:
            path, rest, query = split_provider_uri(request.uri)
        except UnsafePath as e:
            exchange.path = request.path.decode("ascii", "replace")
            return self._refuse(request, exchange, 404, "not_found", "Not found", f"This path is not proxied: {e}")
        exchange.path = path.decode("ascii")

        key = provider_key(provider, request.getHeader, query or b"")
        if key is None:
            source = KEY_SOURCES[provider]
            return self._refuse(
                request, exchange, 401, "authentication_error", f"Missing {source.header} header", f"Send your API key in {source.accepts}."
            )
        if self.in_flight >= self._max_concurrent:
            return self._refuse(request, exchange, 503, "overloaded", "Gateway overloaded", "Too many requests in flight; retry shortly.")

        identity = exchange.identity = identify(key, exchange.started)
        request.responseHeaders.setRawHeaders(b"x-smoltbot-agent", [identity.agent_id.encode("ascii")])
        request.responseHeaders.setRawHeaders(b"x-smoltbot-session", [identity.session_id.encode("ascii")])
        body = _body(request)
        exchange.bytes_in = len(body)
        if self.observe is not None:
            observer = self._observer_for(exchange, body)

        upstream = self._upstreams[provider]
        sent = self.client.request(
            request.method,
            upstream.url_for(rest, query),
            upstream_request_headers(request.requestHeaders, upstream.host_header),
            body,
        )
        self.in_flight += 1
        self._metrics[provider].in_flight.inc()
        relay = Relay(
            request,
            exchange,
            self._clock,
            ttfb_timeout=self._ttfb_timeout,
            idle_timeout=self._idle_timeout,
            observer=observer,
            done=self._relay_done,
        )
        relay.start(sent)
        return NOT_DONE_YET

    def _refuse(self, request: Request, exchange: Exchange, status: int, error_type: str, error: str, message: str) -> bytes:
        body = error_body(request, status, error_type, error, message)
        exchange.status = status
        exchange.outcome = error_type
        exchange.finished_at = self._clock.seconds()
        if self.observe is not None:
            observer = self._observer_for(exchange, _body(request))
            if observer is not None:
                try:
                    observer.exchange_finished(exchange)
                except Exception:
                    self.log.failure("exchange observer failed", request_id=exchange.request_id)
        self._account(exchange)
        return body

    def _relay_done(self, exchange: Exchange) -> None:
        self.in_flight -= 1
        metrics = self._metrics[exchange.provider]
        metrics.in_flight.dec()
        ttfb = exchange.ttfb
        if ttfb is not None:
            metrics.ttfb.observe(ttfb)
        metrics.bytes_out.inc(exchange.bytes_out)
        self._account(exchange)

    def _account(self, exchange: Exchange) -> None:
        """Count a finished exchange and write its access-log line."""
        metrics = self._metrics[exchange.provider]
        duration = exchange.duration or 0.0
        metrics.requests(exchange.status).inc()
        metrics.duration.observe(duration)
        if exchange.bytes_in:
            metrics.bytes_in.inc(exchange.bytes_in)
        ttfb = exchange.ttfb
        identity = exchange.identity
        self.log.info(
            "{method} {path} {status} {duration_ms}ms",
            method=exchange.method,
            provider=exchange.provider,
            path=exchange.path,
            status=exchange.status,
            outcome=exchange.outcome,
            duration_ms=round(duration * 1000, 1),
            ttfb_ms=None if ttfb is None else round(ttfb * 1000, 1),
            bytes_in=exchange.bytes_in,
            bytes_out=exchange.bytes_out,
            request_id=exchange.request_id,
            agent_id=None if identity is None else identity.agent_id,
        )

    def _observer_for(self, exchange: Exchange, body: bytes) -> Any:
        try:
            return self.observe(exchange, body)
        except Exception:
            self.log.failure("exchange observer factory failed", request_id=exchange.request_id)
            return None


def _body(request: Request) -> bytes:
    """The request body, which `GatewayRequest` keeps in memory."""
    content = request.content
    content.seek(0)
    return content.read()


class ProviderResource(Resource):
    """`/<provider>/...`: every method, every path below, proxied to that provider."""

    isLeaf = True

    def __init__(self, provider: str, proxy: ProviderProxy) -> None:
        super().__init__()
        self._provider = provider
        self._proxy = proxy

    def render(self, request: Request) -> bytes | int:
        return self._proxy.handle(self._provider, request)
