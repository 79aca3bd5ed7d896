"""
Where a provider request goes: the upstream of each provider and the URL a gateway path maps
to, with the checks that keep a client from steering the request to another host or path.

A gateway path is `/<provider><rest>`; the upstream URL is the provider's base URL, the raw
`<rest>` and the original query string. `<rest>` must be empty or an absolute path made of
plain path characters, without empty, `.` or `..` segments, backslashes or `@`, whether
written out or percent-encoded (once or more), and without encoded `/` or `\\`. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

# RFC 3986 path characters without "@" (no userinfo tricks), "%" kept for escapes.
_PATH = re.compile(rb"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:%]*)*\Z")
_QUERY = re.compile(rb"[\x21-\x22\x24-\x7e]*\Z")  # printable ASCII without "#"
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_DOT_SEGMENT = re.compile(rb"/\.\.?(?:/|\Z)")
_ENCODED_SEPARATOR = re.compile(rb"%(?:2[Ff]|5[Cc])")
_UNSAFE_DECODED = re.compile(rb"[\x00-\x1f\x7f\\@#?]")


class UnsafePath(ValueError):
    """The path after the provider prefix could reach somewhere the gateway does not proxy to."""


@dataclass(frozen=True)
class Upstream:
    """One provider's upstream: its base URL split into what the HTTP client needs."""

    base: bytes
    """The base URL without a trailing slash, e.g. `https://api.anthropic.com`."""
    scheme: bytes
    host: bytes
    port: int
    host_header: bytes
    """The `Host` header value requests to it carry."""

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """Split an `http(s)://host[:port][/path]` base URL; raise ValueError for anything else."""
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"not an http(s) base URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("an upstream URL must not carry credentials")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = parts.hostname.encode("idna")
        shown = b"[" + host + b"]" if b":" in host else host
        host_header = shown if port == default_port else b"%s:%d" % (shown, port)
        return cls(url.rstrip("/").encode("ascii"), parts.scheme.encode("ascii"), host, port, host_header)

    def url_for(self, rest: bytes, query: bytes | None) -> bytes:
        """The upstream URL for a checked `rest` and the original query (None when the URI had no `?`)."""
        if query is None:
            return self.base + rest
        return self.base + rest + b"?" + query


def split_provider_uri(uri: bytes) -> tuple[bytes, bytes, bytes | None]:
    """
    Split a request URI `/<provider><rest>[?query]` into the path without the query, `rest`
    and the query (None when there was no `?`), raising UnsafePath when either part is unsafe.
    """
    path, mark, query = uri.partition(b"?")
    cut = path.find(b"/", 1)
    rest = path[cut:] if cut > 0 else b""
    check_rest(rest)
    if mark:
        if not _QUERY.match(query):
            raise UnsafePath("query string holds characters that are not allowed")
        return path, rest, query
    return path, rest, None


def check_rest(rest: bytes) -> None:
    """Raise UnsafePath unless `rest` is empty or a plain absolute path (see the module docstring)."""
    if not _PATH.match(rest):
        raise UnsafePath("path holds characters that are not allowed")
    if b"//" in rest or _DOT_SEGMENT.search(rest):
        raise UnsafePath("path holds an empty, '.' or '..' segment")
    decoded = rest
    while _ESCAPE.search(decoded):  # each round is shorter, so this ends
        if _ENCODED_SEPARATOR.search(decoded):
            raise UnsafePath("path holds an encoded '/' or '\\'")
        decoded = unquote_to_bytes(decoded)
        if _UNSAFE_DECODED.search(decoded) or b"//" in decoded or _DOT_SEGMENT.search(decoded):
            raise UnsafePath("path holds an encoded separator, dot segment or control character")
