"""
The HTTP client for provider traffic: one persistent connection pool, TLS verified like a
browser (`service_identity`), connect timeouts, and a lean Twisted `Agent` on top.

It deliberately does nothing else: no cookies (nothing is stored or sent between agents), no
decompression (bytes pass through as the provider encoded them), no redirects, no retries of
requests that carry a body.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer


@implementer(IBodyProducer)
class _BodyBytes:
    """A request body already in memory, written in one go."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class _CachedEndpoints:
    """TCP (or TLS over TCP) endpoints, built once per scheme, host and port and then reused."""

    def __init__(self, reactor: Any, tls_policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._connect_timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connect_timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
            elif uri.scheme != b"http":
                raise ValueError(f"unsupported upstream scheme {uri.scheme!r}")
            self._endpoints[key] = endpoint
        return endpoint


class UpstreamClient:
    """Sends provider requests over a shared pool of keep-alive connections."""

    def __init__(
        self,
        reactor: Any,
        *,
        max_connections_per_host: int,
        keepalive_timeout: float,
        connect_timeout: float,
        tls_policy: IPolicyForHTTPS | None = None,
        endpoints: IAgentEndpointFactory | None = None,
    ) -> None:
        """
        `tls_policy` defaults to browser-like verification of the provider's certificate;
        `endpoints` (how to reach a host) defaults to TCP, or TLS over TCP for https.
        """
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_connections_per_host
        self.pool.cachedConnectionTimeout = keepalive_timeout
        if endpoints is None:
            endpoints = _CachedEndpoints(reactor, tls_policy or BrowserLikePolicyForHTTPS(), connect_timeout)
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, self.pool)

    def request(self, method: bytes, url: bytes, headers: Headers, body: bytes) -> Deferred[IResponse]:
        """
        Send one request (`headers` must hold `Host`); fires with the response once its headers
        have arrived. Cancelling the Deferred abandons the connection attempt or the connection.
        """
        return self._agent.request(method, url, headers, _BodyBytes(body) if body else None)

    def close(self) -> Deferred[None]:
        """Close every idle pooled connection (connections in use close when their response ends)."""
        return self.pool.closeCachedConnections()
