"""
Which headers cross the proxy: the request headers sent upstream and the upstream response
headers given to the client (RFC 9110 §7.6.1 hop-by-hop rules plus the gateway's own).

Requests keep every header except hop-by-hop ones and those the `Connection` header lists,
`Host` (set for the upstream), the body framing (the HTTP client frames the body it sends),
`Expect` (the gateway has already read the body) and `x-mnemom-api-key` (never leaves the
gateway). The client's `Accept-Encoding` goes through as is, so bodies come back exactly as
the provider encoded them. Responses keep every header except hop-by-hop ones and the
upstream's `Access-Control-*` (the gateway's CORS headers are the only ones).
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-mnemom-api-key"}


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    values = headers.getRawHeaders(b"connection")
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(b","))


def upstream_request_headers(incoming: Headers, host: bytes) -> Headers:
    """The headers to send upstream for a client request's headers, with `Host` set to `host`."""
    drop = _REQUEST_DROP | _connection_tokens(incoming) if incoming.hasHeader(b"connection") else _REQUEST_DROP
    kept: dict[bytes, list[bytes]] = {b"Host": [host]}
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in drop:
            kept[name] = list(values)
    return Headers(kept)


def copy_response_headers(upstream: Headers, outgoing: Headers) -> None:
    """
    Put an upstream response's end-to-end headers onto `outgoing`, replacing same-named ones
    (`Date`, `Server`, `x-request-id`); the upstream's `Access-Control-*` are left out.

    Twisted's HTTP client has already taken the connection-control headers (`Connection`,
    `Content-Length` except for HEAD, `Transfer-Encoding`, ...) out of `upstream`.
    """
    for name, values in upstream.getAllRawHeaders():
        lowered = name.lower()
        if lowered not in HOP_BY_HOP and not lowered.startswith(b"access-control-"):
            outgoing.setRawHeaders(name, values)
