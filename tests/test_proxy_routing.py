"""Tests for the proxy's pure parts: upstream URLs, path safety, and the header rules."""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from smoltbot.proxy.headers import copy_response_headers, upstream_request_headers
from smoltbot.proxy.routing import Upstream, UnsafePath, check_rest, split_provider_uri


class UpstreamTests(SynchronousTestCase):
    """Base URLs and the URLs built on them."""

    def test_base_urls(self) -> None:
        """Scheme, host, port and the Host header come from the base URL; a trailing slash is dropped."""
        table = {
            "https://api.anthropic.com": (b"https://api.anthropic.com", b"https", b"api.anthropic.com", 443, b"api.anthropic.com"),
            "http://127.0.0.1:9000/": (b"http://127.0.0.1:9000", b"http", b"127.0.0.1", 9000, b"127.0.0.1:9000"),
            "https://egress.local:8443/v/anthropic": (b"https://egress.local:8443/v/anthropic", b"https", b"egress.local", 8443, b"egress.local:8443"),
            "http://[::1]:81": (b"http://[::1]:81", b"http", b"::1", 81, b"[::1]:81"),
        }
        for url, expected in table.items():
            upstream = Upstream.from_url(url)
            self.assertEqual((upstream.base, upstream.scheme, upstream.host, upstream.port, upstream.host_header), expected)

    def test_bad_base_urls(self) -> None:
        """Non-HTTP schemes, credentials and query strings are not upstreams."""
        for url in ("ftp://x", "https://user:pw@x", "https://x/?a=1", "x"):
            self.assertRaises(ValueError, Upstream.from_url, url)

    def test_url_for(self) -> None:
        """The URL is base, rest and the original query (an empty `?` kept)."""
        upstream = Upstream.from_url("https://api.test/base")
        self.assertEqual(upstream.url_for(b"/v1/x", None), b"https://api.test/base/v1/x")
        self.assertEqual(upstream.url_for(b"", b""), b"https://api.test/base?")
        self.assertEqual(upstream.url_for(b"/v1", b"a=1&key=2"), b"https://api.test/base/v1?a=1&key=2")


class PathTests(SynchronousTestCase):
    """Path safety: nothing after the provider prefix can leave the upstream's path space."""

    def test_split(self) -> None:
        """The URI splits into the path, the rest after the provider and the query."""
        self.assertEqual(split_provider_uri(b"/openai/v1/chat/completions?x=1"), (b"/openai/v1/chat/completions", b"/v1/chat/completions", b"x=1"))
        self.assertEqual(split_provider_uri(b"/openai"), (b"/openai", b"", None))
        self.assertEqual(split_provider_uri(b"/openai/"), (b"/openai/", b"/", None))

    def test_safe(self) -> None:
        """Real provider paths pass."""
        for rest in (
            b"",
            b"/",
            b"/v1/messages",
            b"/v1/messages/count_tokens",
            b"/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            b"/v1/files/file-abc123/content",
            b"/v1/models/ft:gpt-4o:org:name:id",
            b"/v1/a%20b",
            b"/.well-known/x",
        ):
            check_rest(rest)

    def test_unsafe(self) -> None:
        """Dot segments, empty segments, `@`, backslashes, controls and encoded separators are refused."""
        for rest in (
            b"/..",
            b"/v1/../x",
            b"/v1/./x",
            b"/.",
            b"//evil.test/x",
            b"/v1//x",
            b"/@evil.test",
            b"/v1/a@b",
            b"/v1\\x",
            b"/%2e%2E/x",
            b"/%2e/x",
            b"/%252e%252e/x",
            b"/%25252e%25252e/x",
            b"/v1%2fx",
            b"/v1%5cx",
            b"/v1%40x",
            b"/v1%00",
            b"/v1%0d%0aX-Injected:%201",
            b"/v1 x",
            b"/v1#frag",
            b"/v1/\xc3\xa9",
            b"x",
        ):
            self.assertRaises(UnsafePath, check_rest, rest)

    def test_unsafe_query(self) -> None:
        """A query with controls, spaces or a fragment mark is refused."""
        for uri in (b"/openai/v1?a=1#x", b"/openai/v1?a=\x00", b"/openai/v1?a b"):
            self.assertRaises(UnsafePath, split_provider_uri, uri)


class HeaderTests(SynchronousTestCase):
    """Header rules in both directions."""

    def test_request_headers(self) -> None:
        """Hop-by-hop, Connection-listed, framing, Expect, Host and x-mnemom-api-key are dropped; Host is set."""
        incoming = Headers(
            {
                b"Host": [b"gw"],
                b"Connection": [b"Keep-Alive, x-hop"],
                b"X-Hop": [b"1"],
                b"Keep-Alive": [b"300"],
                b"Transfer-Encoding": [b"chunked"],
                b"Content-Length": [b"3"],
                b"Expect": [b"100-continue"],
                b"X-Mnemom-Api-Key": [b"m"],
                b"Proxy-Connection": [b"keep-alive"],
                b"Accept-Encoding": [b"gzip"],
                b"X-Goog-Api-Key": [b"g"],
                b"Openai-Organization": [b"org"],
                b"X-Multi": [b"a", b"b"],
            }
        )
        sent = upstream_request_headers(incoming, b"api.test")
        self.assertEqual(
            dict(sent.getAllRawHeaders()),
            {
                b"Host": [b"api.test"],
                b"Accept-Encoding": [b"gzip"],
                b"X-Goog-Api-Key": [b"g"],
                b"Openai-Organization": [b"org"],
                b"X-Multi": [b"a", b"b"],
            },
        )

    def test_response_headers(self) -> None:
        """Upstream headers replace same-named ones; hop-by-hop and Access-Control-* stay out."""
        outgoing = Headers({b"Access-Control-Allow-Origin": [b"*"], b"Date": [b"gateway"], b"X-Request-Id": [b"ours"]})
        upstream = Headers(
            {
                b"Date": [b"upstream"],
                b"X-Request-Id": [b"theirs"],
                b"Access-Control-Allow-Origin": [b"https://x"],
                b"Keep-Alive": [b"5"],
                b"Content-Encoding": [b"gzip"],
                b"Set-Cookie": [b"a=1", b"b=2"],
            }
        )
        copy_response_headers(upstream, outgoing)
        self.assertEqual(
            dict(outgoing.getAllRawHeaders()),
            {
                b"Access-Control-Allow-Origin": [b"*"],
                b"Date": [b"upstream"],
                b"X-Request-Id": [b"theirs"],
                b"Content-Encoding": [b"gzip"],
                b"Set-Cookie": [b"a=1", b"b=2"],
            },
        )
