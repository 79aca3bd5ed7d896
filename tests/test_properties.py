"""
Properties that must hold for every input, checked with hypothesis: a response's extract does
not depend on how the network split its bytes, and no request path or query reaches a host
other than the provider's upstream.
"""

from __future__ import annotations

import zlib
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.extract import Extract, extractor_for
from smoltbot.fakeprovider import Knobs, Reply, anthropic, gemini, openai
from smoltbot.proxy.routing import Upstream, UnsafePath, split_provider_uri

_MODULES = {"anthropic": anthropic, "openai": openai, "gemini": gemini}
_REQUEST = {"stream_options": {"include_usage": True}}


def _extract(provider: str, chunks: list[bytes], *, streaming: bool, encoding: str | None = None) -> Extract:
    content_type = "text/event-stream" if streaming else "application/json"
    extractor = extractor_for(provider, streaming=streaming, content_type=content_type, content_encoding=encoding)
    for chunk in chunks:
        extractor.feed(chunk)
    return extractor.finish(True)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length, sorted, duplicates allowed)."""
    points = sorted(cut % (len(data) + 1) for cut in cuts)
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


_replies = st.builds(
    Reply,
    number=st.integers(1, 1000),
    model=st.sampled_from(["model-x", "claude-sonnet-4-20250514", "gpt-5", "gemini-2.5-pro"]),
    knobs=st.builds(
        Knobs,
        events=st.integers(0, 12),
        event_size=st.integers(1, 40),
        marker=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12),
    ),
    prompt_tokens=st.integers(0, 5000),
    thinking=st.booleans(),
    tool_name=st.sampled_from([None, "get_weather"]),
)


class ExtractorSplitTests(SynchronousTestCase):
    """The extract of a response is the same whatever pieces its bytes arrive in."""

    @settings(max_examples=60, deadline=None)
    @given(provider=st.sampled_from(sorted(_MODULES)), reply=_replies, cuts=st.lists(st.integers(0, 1 << 20), max_size=40))
    def test_stream_any_split(self, provider: str, reply: Reply, cuts: list[int]) -> None:
        """A stream fed in any split gives the extract of the stream fed event by event."""
        events = list(_MODULES[provider].stream(reply, _REQUEST))
        expected = _extract(provider, events, streaming=True)
        got = _extract(provider, _split(b"".join(events), cuts), streaming=True)
        self.assertEqual(got, expected)
        self.assertEqual(got.thinking_text, expected.thinking_text)
        self.assertIsNone(got.extraction_error)

    @settings(max_examples=30, deadline=None)
    @given(provider=st.sampled_from(sorted(_MODULES)), reply=_replies, cuts=st.lists(st.integers(0, 1 << 20), max_size=20))
    def test_gzip_stream_any_split(self, provider: str, reply: Reply, cuts: list[int]) -> None:
        """A gzip-compressed stream split anywhere, even inside the compressed bytes, gives the plain stream's extract."""
        events = list(_MODULES[provider].stream(reply, _REQUEST))
        expected = _extract(provider, events, streaming=True)
        got = _extract(provider, _split(_gzip(b"".join(events)), cuts), streaming=True, encoding="gzip")
        self.assertEqual(got, expected)

    @settings(max_examples=50, deadline=None)
    @given(provider=st.sampled_from(sorted(_MODULES)), reply=_replies, cuts=st.lists(st.integers(0, 1 << 20), max_size=40))
    def test_json_any_split(self, provider: str, reply: Reply, cuts: list[int]) -> None:
        """A JSON body split anywhere gives the extract of the body in one piece."""
        body = _MODULES[provider].message(reply, _REQUEST)
        expected = _extract(provider, [body], streaming=False)
        got = _extract(provider, _split(body, cuts), streaming=False)
        self.assertEqual(got, expected)
        self.assertEqual(got.thinking_text, expected.thinking_text)


_UPSTREAMS = [
    Upstream.from_url("https://api.anthropic.com"),
    Upstream.from_url("http://127.0.0.1:9000/base/v1"),
    Upstream.from_url("https://[::1]:8443"),
]


class RoutingTests(SynchronousTestCase):
    """No request URI makes the gateway call another host, port or base path than the provider's upstream."""

    @settings(max_examples=1000, deadline=None)
    @given(
        upstream=st.sampled_from(_UPSTREAMS),
        uri=st.one_of(
            st.binary(max_size=80),
            st.lists(
                st.sampled_from([b"/", b"..", b".", b"%2e", b"%2f", b"%5c", b"%25", b"@", b"#", b"?", b"\\", b":", b"v1", b"x", b"%", b"%00", b"//"]),
                max_size=12,
            ).map(b"".join),
        ),
    )
    def test_no_uri_leaves_the_upstream(self, upstream: Upstream, uri: bytes) -> None:
        """Every URI is refused or maps to a URL on the upstream's scheme, host, port and base path."""
        try:
            _, rest, query = split_provider_uri(b"/anthropic" + uri)
        except UnsafePath:
            return
        url = upstream.url_for(rest, query)
        base = urlsplit(upstream.base.decode("ascii"))
        parts = urlsplit(url.decode("ascii"))
        self.assertEqual((parts.scheme, parts.hostname, parts.port), (base.scheme, base.hostname, base.port))
        self.assertTrue(parts.path.startswith(base.path), url)
        self.assertNotIn("..", parts.path.split("/"))
        self.assertFalse(parts.fragment)
