"""
Unit tests of the provider proxy, in memory: routing, key checks, header rules, relay,
backpressure, timeouts on a fake clock, cancellation, limits, metrics, access log, observer.
"""

from __future__ import annotations

import json
from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionLost, DNSLookupError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.identity import identify
from tests.proxy_harness import LAST_CHUNK, chunk, make_gateway, parse_response, upstream_head

KEY = "sk-ant-SECRET-MARKER-0123456789"
ANTHROPIC = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "Content-Type": "application/json"}
BODY = b'{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
SSE_HEAD = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}


def request_line_and_headers(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """Split a raw request the upstream received into its request line, headers and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


class ForwardingTests(SynchronousTestCase):
    """What goes upstream, and where."""

    def test_path_and_query_go_to_the_upstream(self) -> None:
        """The rest of the path and the raw query string follow the provider's base URL."""
        gateway = make_gateway(self)
        gateway.request("POST", "/anthropic/v1/messages?beta=true&x=%2F", ANTHROPIC, BODY)
        line, headers, body = request_line_and_headers(gateway.upstream().received())
        self.assertEqual(line, "POST /v1/messages?beta=true&x=%2F HTTP/1.1")
        self.assertEqual(headers["host"], ["api.anthropic.test"])
        self.assertEqual(body, BODY)
        self.assertEqual((gateway.upstream().uri.scheme, gateway.upstream().uri.port), (b"https", 443))

    def test_base_url_path_and_port(self) -> None:
        """An upstream base URL with a port and a path prefix keeps both."""
        gateway = make_gateway(self)
        gateway.request("POST", "/gemini/v1beta/models/gemini-2.5-pro:generateContent?key=AIzaKEY", {}, b"{}")
        line, headers, _ = request_line_and_headers(gateway.upstream().received())
        self.assertEqual(line, "POST /base/v1beta/models/gemini-2.5-pro:generateContent?key=AIzaKEY HTTP/1.1")
        self.assertEqual(headers["host"], ["gemini.test:8080"])

    def test_every_method(self) -> None:
        """Any method is proxied as is, a bodiless GET without a body."""
        for method in ("GET", "DELETE", "PUT", "PATCH", "HEAD"):
            gateway = make_gateway(self)
            gateway.request(method, "/openai/v1/models", {"Authorization": "Bearer sk-1"})
            line, headers, body = request_line_and_headers(gateway.upstream().received())
            self.assertEqual(line, f"{method} /v1/models HTTP/1.1")
            self.assertEqual(body, b"")

    def test_unsafe_paths_are_refused(self) -> None:
        """Paths that could reach another host or path get a JSON 404 and no upstream call."""
        unsafe = [
            "/anthropic/../admin",
            "/anthropic/v1/./messages",
            "/anthropic//evil.example/v1",
            "/anthropic/%2e%2e/admin",
            "/anthropic/%252e%252e/admin",
            "/anthropic/v1%2F..%2Fadmin",
            "/anthropic/v1%5Cadmin",
            "/anthropic/@evil.example/v1",
            "/anthropic/v1/%40evil.example",
            "/anthropic/v1/%00",
            "/anthropic/v1\\admin",
        ]
        for path in unsafe:
            gateway = make_gateway(self)
            response = gateway.request("POST", path, ANTHROPIC, BODY).response()
            self.assertEqual(response.status, 404, path)
            self.assertEqual(json.loads(response.body)["type"], "not_found")
            self.assertEqual(gateway.upstreams.connections, [], path)

    def test_request_headers_forwarded_except_hop_by_hop(self) -> None:
        """End-to-end headers pass unchanged; hop-by-hop, Connection-listed, Host and x-mnemom-api-key do not."""
        gateway = make_gateway(self)
        headers = {
            **ANTHROPIC,
            "anthropic-beta": "tools-2024-05-16",
            "Accept-Encoding": "gzip, br",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic eA==",
            "x-mnemom-api-key": "mnm-secret",
            "X-Custom": "a, b",
        }
        gateway.request("POST", "/anthropic/v1/messages", headers, BODY)
        _, sent, _ = request_line_and_headers(gateway.upstream().received())
        self.assertEqual(
            sent,
            {
                "host": ["api.anthropic.test"],
                "x-api-key": [KEY],
                "anthropic-version": ["2023-06-01"],
                "content-type": ["application/json"],
                "anthropic-beta": ["tools-2024-05-16"],
                "accept-encoding": ["gzip, br"],
                "x-custom": ["a, b"],
                "content-length": [str(len(BODY))],
            },
        )

    def test_large_body_forwarded_byte_for_byte(self) -> None:
        """A body above twisted's temp-file threshold is kept in memory and sent unchanged."""
        gateway = make_gateway(self)
        body = bytes(range(256)) * 2000
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, body)
        self.assertEqual(request_line_and_headers(gateway.upstream().received())[2], body)
        request = client.pending_requests()[0]
        self.assertEqual(type(request.content).__name__, "BytesIO")

    def test_chunked_request_body_forwarded_with_a_length(self) -> None:
        """A chunked upload reaches the upstream as the same bytes with a Content-Length."""
        gateway = make_gateway(self)
        framed = chunk(BODY[:10]) + chunk(BODY[10:]) + LAST_CHUNK
        gateway.request("POST", "/anthropic/v1/messages", {**ANTHROPIC, "Transfer-Encoding": "chunked"}, framed)
        _, sent, body = request_line_and_headers(gateway.upstream().received())
        self.assertEqual((body, sent["content-length"], "transfer-encoding" in sent), (BODY, [str(len(BODY))], False))


class KeyTests(SynchronousTestCase):
    """The provider key is required, wherever each provider lets it be."""

    def test_missing_key_is_401_naming_the_header(self) -> None:
        """Without a key each provider answers 401 authentication_error naming its header."""
        cases = {
            "/anthropic/v1/messages": "Missing x-api-key header",
            "/openai/v1/chat/completions": "Missing Authorization: Bearer <key> header",
            "/gemini/v1beta/models/m:generateContent": "Missing x-goog-api-key header",
        }
        for path, error in cases.items():
            gateway = make_gateway(self)
            response = gateway.request("POST", path, {"Authorization": "Basic eDp5"}, b"{}").response()
            body = json.loads(response.body)
            self.assertEqual((response.status, body["type"], body["error"]), (401, "authentication_error", error))
            self.assertEqual(response.header("content-type"), "application/json")
            self.assertEqual(gateway.upstreams.connections, [])

    def test_every_key_source_identifies_the_same_agent(self) -> None:
        """x-api-key and Bearer (Anthropic), x-goog-api-key and ?key= (Gemini) give the same agent."""
        expected = identify(KEY, 1_700_000_000)
        cases = [
            ("/anthropic/v1/messages", {"x-api-key": KEY}),
            ("/anthropic/v1/messages", {"Authorization": f"Bearer {KEY}"}),
            ("/openai/v1/chat/completions", {"Authorization": f"bearer {KEY}"}),
            ("/gemini/v1beta/models/m:generateContent", {"x-goog-api-key": KEY}),
            (f"/gemini/v1beta/models/m:generateContent?alt=sse&key={KEY}", {}),
        ]
        for path, headers in cases:
            gateway = make_gateway(self)
            client = gateway.request("POST", path, headers, b"{}")
            gateway.upstream().respond(upstream_head("200 OK", {"Content-Length": "2"}) + b"{}")
            response = client.response()
            self.assertEqual(response.header("x-smoltbot-agent"), expected.agent_id, path)
            self.assertEqual(response.header("x-smoltbot-session"), expected.session_id, path)


class ResponseTests(SynchronousTestCase):
    """What the client gets back."""

    def test_json_response_relayed_unchanged(self) -> None:
        """Status, end-to-end headers, Content-Length and body bytes are the upstream's own."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        payload = b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi \xc3\xa9"}]}'
        gateway.upstream().respond(
            upstream_head(
                "200 OK",
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(payload)),
                    "request-id": "req_123",
                    "anthropic-ratelimit-requests-remaining": "99",
                    "Set-Cookie": "cf=1; Path=/",
                    "Connection": "keep-alive",
                    "Keep-Alive": "timeout=5",
                },
            )
            + payload
        )
        response = client.response()
        self.assertEqual((response.status, response.body, response.complete), (200, payload, True))
        self.assertEqual(response.header("content-length"), str(len(payload)))
        self.assertEqual(response.header("request-id"), "req_123")
        self.assertEqual(response.header("anthropic-ratelimit-requests-remaining"), "99")
        self.assertEqual(response.header("set-cookie"), "cf=1; Path=/")
        self.assertNotIn("keep-alive", response.headers)
        self.assertEqual(response.header("x-smoltbot-agent"), identify(KEY, 0).agent_id)

    def test_sse_chunks_written_as_they_arrive(self) -> None:
        """Each upstream chunk reaches the client before the next one is sent."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD))
        self.assertEqual(client.response().status, 200)
        events = [b"event: message_start\ndata: {}\n\n", b"event: ping\ndata: {}\n\n", b"event: message_stop\ndata: {}\n\n"]
        sent = b""
        for event in events:
            upstream.respond(chunk(event))
            sent += event
            self.assertEqual(client.response().body, sent)
            self.assertFalse(client.response().complete)
        upstream.respond(LAST_CHUNK)
        self.assertTrue(client.response().complete)
        self.assertEqual(client.response().header("content-type"), "text/event-stream")

    def test_upstream_errors_pass_through(self) -> None:
        """4xx and 5xx answers keep their status, headers and body."""
        for status in ("401 Unauthorized", "403 Forbidden", "429 Too Many Requests", "500 Internal Server Error", "529 Overloaded"):
            gateway = make_gateway(self)
            client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
            payload = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
            gateway.upstream().respond(
                upstream_head(status, {"Content-Type": "application/json", "Retry-After": "7", "Content-Length": str(len(payload))}) + payload
            )
            response = client.response()
            self.assertEqual((response.status, response.body, response.header("retry-after")), (int(status[:3]), payload, "7"))

    def test_request_id_rules(self) -> None:
        """A well-formed incoming id is kept; the upstream's own x-request-id passes through untouched."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/openai/v1/chat/completions", {"Authorization": "Bearer sk-1", "x-request-id": "agent-run.42"}, b"{}")
        gateway.upstream().respond(upstream_head("200 OK", {"Content-Length": "2"}) + b"{}")
        response = client.response()
        self.assertEqual(response.headers["x-smoltbot-request-id"], ["agent-run.42"])
        self.assertEqual(response.headers["x-request-id"], ["agent-run.42"])

        client = gateway.request("POST", "/openai/v1/chat/completions", {"Authorization": "Bearer sk-1", "x-request-id": "bad id!"}, b"{}")
        gateway.upstream().respond(upstream_head("200 OK", {"Content-Length": "2", "x-request-id": "req_openai_1"}) + b"{}")
        response = client.response()
        self.assertEqual(response.headers["x-request-id"], ["req_openai_1"])
        self.assertNotEqual(response.header("x-smoltbot-request-id"), "bad id!")
        self.assertEqual(len(response.header("x-smoltbot-request-id")), 36)

    def test_cors_headers_never_duplicated(self) -> None:
        """The gateway's CORS headers appear once, whatever the upstream sends."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        gateway.upstream().respond(
            upstream_head(
                "200 OK",
                {"Content-Length": "2", "Access-Control-Allow-Origin": "https://console.example", "Access-Control-Expose-Headers": "request-id"},
            )
            + b"{}"
        )
        response = client.response()
        self.assertEqual(response.headers["access-control-allow-origin"], ["*"])
        self.assertEqual(len(response.headers["access-control-expose-headers"]), 1)
        self.assertIn("x-smoltbot-agent", response.header("access-control-expose-headers"))

    def test_preflight_and_models(self) -> None:
        """OPTIONS on a provider path is a 204 preflight; /models.json lists the models."""
        gateway = make_gateway(self)
        response = gateway.request("OPTIONS", "/anthropic/v1/messages").response()
        self.assertEqual((response.status, response.header("access-control-allow-origin")), (204, "*"))
        self.assertEqual(gateway.upstreams.connections, [])
        response = gateway.request("GET", "/models.json").response()
        self.assertEqual(sorted(json.loads(response.body)), ["anthropic", "gemini", "openai"])
        self.assertEqual(response.header("access-control-allow-origin"), "*")

    def test_upstream_connection_reused(self) -> None:
        """Sequential requests to one provider share one keep-alive upstream connection."""
        gateway = make_gateway(self)
        for _ in range(3):
            client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
            gateway.upstream().respond(upstream_head("200 OK", {"Content-Length": "2"}) + b"{}")
            self.assertEqual(client.response().body, b"{}")
        self.assertEqual(len(gateway.upstreams.connections), 1)


class FailureTests(SynchronousTestCase):
    """Upstream failures, timeouts and the client going away."""

    def test_refused_connection_is_502(self) -> None:
        """An upstream that refuses the connection gives 502 upstream_unreachable."""
        gateway = make_gateway(self)
        gateway.upstreams.mode = "refuse"
        response = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY).response()
        self.assertEqual((response.status, json.loads(response.body)["type"]), (502, "upstream_unreachable"))
        self.assertNotIn("api.anthropic.test", response.body.decode())

    def test_connect_failures(self) -> None:
        """A DNS failure or a connect timeout is 502 upstream_unreachable."""
        for error in (DNSLookupError("no such host"), TimeoutError("connect")):
            gateway = make_gateway(self)
            gateway.upstreams.mode = error
            response = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY).response()
            self.assertEqual((response.status, json.loads(response.body)["type"]), (502, "upstream_unreachable"))

    def test_tls_failure_is_502(self) -> None:
        """A TLS handshake failure (the connection dies with an SSL error before a response) is 502."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        gateway.upstream().close(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
        response = client.response()
        self.assertEqual((response.status, json.loads(response.body)["type"]), (502, "upstream_unreachable"))

    def test_connection_lost_before_response_is_502(self) -> None:
        """An upstream that closes before answering gives 502."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        gateway.upstream().close(Failure(ConnectionLost()))
        self.assertEqual(client.response().status, 502)

    def test_no_response_headers_within_ttfb_is_504(self) -> None:
        """Without response headers within the TTFB timeout the client gets 504 and the upstream is cut."""
        gateway = make_gateway(self, ttfb_timeout=30)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        gateway.clock.advance(29.9)
        self.assertEqual(client.received(), b"")
        gateway.clock.advance(0.1)
        response = client.response()
        self.assertEqual((response.status, json.loads(response.body)["type"]), (504, "upstream_timeout"))
        self.assertTrue(gateway.upstream().transport.disconnected)

    def test_ttfb_covers_connecting(self) -> None:
        """A connection attempt that hangs is abandoned at the TTFB timeout with a 504."""
        gateway = make_gateway(self, ttfb_timeout=30)
        gateway.upstreams.mode = "hang"
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        gateway.clock.advance(30)
        self.assertEqual(client.response().status, 504)
        self.assertTrue(gateway.upstreams.pending[0].called)

    def test_idle_gap_cuts_the_stream(self) -> None:
        """A gap between chunks longer than the idle timeout cuts upstream and client, never a clean end."""
        gateway = make_gateway(self, idle_timeout=10)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        gateway.clock.advance(9.9)
        self.assertEqual(upstream.transport.producerState, "producing")
        gateway.clock.advance(0.1)
        self.assertEqual(upstream.transport.producerState, "stopped")
        upstream.close(Failure(ConnectionLost()))
        self.assertTrue(client.transport.disconnecting)
        response = client.response()
        self.assertEqual((response.body, response.complete), (b"data: 1\n\n", False))
        self.assertEqual(gateway.access_lines()[-1]["outcome"], "upstream_idle_timeout")

    def test_healthy_stream_has_no_wall_clock_cap(self) -> None:
        """A stream that keeps sending within the idle timeout runs as long as it likes."""
        gateway = make_gateway(self, ttfb_timeout=30, idle_timeout=10)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD))
        for _ in range(100):
            gateway.clock.advance(9)
            upstream.respond(chunk(b"data: tick\n\n"))
        upstream.respond(LAST_CHUNK)
        response = client.response()
        self.assertEqual((response.complete, len(response.body)), (True, 1200))
        self.assertFalse(client.transport.disconnecting)

    def test_idle_clock_stops_while_the_client_pauses(self) -> None:
        """A client that pauses the stream is not an idle upstream."""
        gateway = make_gateway(self, idle_timeout=10)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        client.pause()
        gateway.clock.advance(60)
        self.assertEqual(upstream.transport.producerState, "paused")
        client.resume()
        gateway.clock.advance(9)
        self.assertEqual(upstream.transport.producerState, "producing")
        gateway.clock.advance(1)
        self.assertEqual(upstream.transport.producerState, "stopped")

    def test_mid_stream_failure_breaks_the_client_connection(self) -> None:
        """An upstream failing after the first byte closes the client connection with the body unfinished."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"event: ping\ndata: {}\n\n"))
        upstream.close(Failure(ConnectionLost()))
        response = client.response()
        self.assertEqual((response.status, response.body, response.complete), (200, b"event: ping\ndata: {}\n\n", False))
        self.assertTrue(client.transport.disconnecting)
        self.assertNotIn(b"0\r\n\r\n", client.received())

    def test_mid_stream_failure_with_content_length(self) -> None:
        """A JSON body cut short by the upstream reaches the client short of its Content-Length."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", {"Content-Length": "100"}) + b'{"partial":')
        upstream.close(Failure(ConnectionLost()))
        response = client.response()
        self.assertEqual((response.body, response.complete), (b'{"partial":', False))
        self.assertTrue(client.transport.disconnecting)

    def test_mid_stream_failure_aborts_a_paused_client(self) -> None:
        """When the client is not reading, an upstream failure aborts its connection outright."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        client.pause()
        upstream.close(Failure(ConnectionLost()))
        self.assertTrue(client.transport.disconnected)

    def test_client_disconnect_before_response_cancels_upstream(self) -> None:
        """A client leaving before the response aborts the upstream connection at once."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        client.disconnect()
        self.assertTrue(gateway.upstream().transport.disconnected)
        self.assertEqual(gateway.access_lines()[-1]["outcome"], "client_disconnected")
        self.assertEqual(gateway.metric("gateway_requests_total", provider="anthropic", status="499"), 1)
        self.assertEqual(gateway.proxy.in_flight, 0)

    def test_client_disconnect_while_connecting_cancels_the_attempt(self) -> None:
        """A client leaving while the upstream connection is being made cancels the attempt."""
        gateway = make_gateway(self)
        gateway.upstreams.mode = "hang"
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        client.disconnect()
        self.assertTrue(gateway.upstreams.pending[0].called)
        self.assertEqual(gateway.proxy.in_flight, 0)

    def test_client_disconnect_mid_stream_stops_upstream(self) -> None:
        """A client leaving mid-stream stops the upstream read at once and closes it."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        client.disconnect()
        self.assertEqual(upstream.transport.producerState, "stopped")
        upstream.close(Failure(ConnectionLost()))
        self.assertEqual(gateway.access_lines()[-1]["outcome"], "client_disconnected")
        self.assertEqual(gateway.proxy.in_flight, 0)

    def test_paused_client_pauses_the_upstream_read(self) -> None:
        """Backpressure: the client's transport pausing pauses the upstream transport, and resuming resumes it."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        client.pause()
        self.assertEqual(upstream.transport.producerState, "paused")
        client.resume()
        self.assertEqual(upstream.transport.producerState, "producing")


class LimitTests(SynchronousTestCase):
    """Overload and body size caps."""

    def test_overload_is_503(self) -> None:
        """Beyond the concurrency cap requests get 503 overloaded; capacity returns when one ends."""
        gateway = make_gateway(self, max_concurrent=1)
        first = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        response = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY).response()
        self.assertEqual((response.status, json.loads(response.body)["type"]), (503, "overloaded"))
        gateway.upstream().respond(upstream_head("200 OK", {"Content-Length": "2"}) + b"{}")
        self.assertEqual(first.response().status, 200)
        gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        self.assertEqual(gateway.upstream().received().count(b"POST /v1/messages"), 2)

    def test_body_over_the_cap_refused_from_content_length(self) -> None:
        """A Content-Length over the cap gets 413 request_too_large before any body byte is read."""
        gateway = make_gateway(self, max_body=4096)
        client = gateway.connect()
        client.send(b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: g\r\nx-api-key: k\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        response = client.response()
        self.assertEqual((response.status, json.loads(response.body)["type"]), (413, "request_too_large"))
        self.assertEqual(response.header("access-control-allow-origin"), "*")
        self.assertNotIn(b"100 Continue", client.received())
        self.assertTrue(client.transport.disconnecting)
        client.send(b"x" * 5000)
        self.assertEqual(gateway.upstreams.connections, [])

    def test_chunked_body_over_the_cap_refused(self) -> None:
        """A chunked upload growing past the cap gets 413 and the connection closes."""
        gateway = make_gateway(self, max_body=4096)
        client = gateway.request("POST", "/anthropic/v1/messages", {"x-api-key": "k", "Transfer-Encoding": "chunked"}, chunk(b"x" * 3000))
        self.assertEqual(client.received(), b"")
        client.send(chunk(b"x" * 3000))
        self.assertEqual(client.response().status, 413)
        self.assertTrue(client.transport.disconnecting)
        client.send(LAST_CHUNK)
        self.assertEqual(gateway.upstreams.connections, [])

    def test_body_at_the_cap_accepted(self) -> None:
        """A body exactly at the cap is proxied."""
        gateway = make_gateway(self, max_body=4096)
        gateway.request("POST", "/anthropic/v1/messages", {"x-api-key": "k"}, b"y" * 4096)
        self.assertTrue(gateway.upstream().received().endswith(b"y" * 4096))


class ObservabilityTests(SynchronousTestCase):
    """Metrics, the access log, and the exchange observer."""

    def _stream(self, gateway: Any, path: str = "/anthropic/v1/messages?beta=true") -> Any:
        client = gateway.request("POST", path, ANTHROPIC, BODY)
        gateway.clock.advance(0.25)
        upstream = gateway.upstream()
        upstream.respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n"))
        gateway.clock.advance(1)
        upstream.respond(chunk(b"data: 2\n\n") + LAST_CHUNK)
        return client

    def test_metrics(self) -> None:
        """Requests, duration, TTFB, in-flight and byte counters follow each request."""
        gateway = make_gateway(self)
        client = gateway.request("POST", "/anthropic/v1/messages", ANTHROPIC, BODY)
        self.assertEqual(gateway.metric("gateway_requests_in_flight", provider="anthropic"), 1)
        gateway.upstream().respond(upstream_head("200 OK", SSE_HEAD) + chunk(b"data: 1\n\n") + LAST_CHUNK)
        self.assertTrue(client.response().complete)
        gateway.request("POST", "/openai/v1/chat/completions", {}, b"{}")
        self.assertEqual(gateway.metric("gateway_requests_total", provider="anthropic", status="200"), 1)
        self.assertEqual(gateway.metric("gateway_requests_total", provider="openai", status="401"), 1)
        self.assertEqual(gateway.metric("gateway_requests_in_flight", provider="anthropic"), 0)
        self.assertEqual(gateway.metric("gateway_request_duration_seconds_count", provider="anthropic"), 1)
        self.assertEqual(gateway.metric("gateway_time_to_first_byte_seconds_count", provider="anthropic"), 1)
        self.assertEqual(gateway.metric("gateway_request_bytes_total", provider="anthropic"), len(BODY))
        self.assertEqual(gateway.metric("gateway_response_bytes_total", provider="anthropic"), 9)

    def test_one_access_line_per_request(self) -> None:
        """Each request writes one access-log line with its fields and without the query string."""
        gateway = make_gateway(self)
        self._stream(gateway)
        (line,) = gateway.access_lines()
        expected = {
            "method": "POST",
            "provider": "anthropic",
            "path": "/anthropic/v1/messages",
            "status": 200,
            "outcome": "ok",
            "duration_ms": 1250.0,
            "ttfb_ms": 250.0,
            "bytes_in": len(BODY),
            "bytes_out": 18,
            "agent_id": identify(KEY, 0).agent_id,
        }
        self.assertEqual({k: line[k] for k in expected}, expected)
        self.assertEqual(len(line["request_id"]), 36)

    def test_secrets_never_logged(self) -> None:
        """Neither a provider key (header or ?key=) nor a query string appears in any log event."""
        from twisted.logger import formatEvent

        gateway = make_gateway(self)
        self._stream(gateway)
        gateway.request("POST", f"/gemini/v1beta/models/m:generateContent?key={KEY}", {}, b"{}")
        gateway.upstream().close(Failure(ConnectionLost()))
        gateway.request("POST", "/anthropic/v1/messages?token=abc", {"x-api-key": KEY, "Content-Length": "99999999999"})
        self.assertTrue(gateway.events)
        for event in gateway.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(KEY, text)
            self.assertNotIn("SECRET-MARKER", text)
            self.assertNotIn("token=abc", text)

    def test_observer_sees_headers_chunks_and_outcome(self) -> None:
        """An attached observer gets the response headers, every chunk as sent, and the finished exchange."""
        seen: list[Any] = []

        class Observer:
            def response_started(self, exchange: Any, headers: Any) -> None:
                seen.append(("started", exchange.status, headers.getRawHeaders(b"content-type")))

            def response_chunk(self, data: bytes) -> None:
                seen.append(("chunk", data))

            def exchange_finished(self, exchange: Any) -> None:
                seen.append(("finished", exchange.outcome, exchange.bytes_in, exchange.bytes_out, exchange.identity.agent_id))

        bodies: list[bytes] = []

        def observe(exchange: Any, body: bytes) -> Observer:
            bodies.append(body)
            return Observer()

        gateway = make_gateway(self, observe=observe)
        self._stream(gateway)
        self.assertEqual(bodies, [BODY])
        self.assertEqual(
            seen,
            [
                ("started", 200, [b"text/event-stream"]),
                ("chunk", b"data: 1\n\n"),
                ("chunk", b"data: 2\n\n"),
                ("finished", "ok", len(BODY), 18, identify(KEY, 0).agent_id),
            ],
        )

    def test_observer_sees_refused_requests(self) -> None:
        """A request the gateway answers itself still reaches the observer, with its outcome and no identity."""
        finished: list[Any] = []

        class Observer:
            def exchange_finished(self, exchange: Any) -> None:
                finished.append((exchange.status, exchange.outcome, exchange.identity, exchange.path))

        gateway = make_gateway(self, observe=lambda exchange, body: Observer())
        gateway.request("POST", "/openai/v1/chat/completions?x=1", {}, b"{}")
        self.assertEqual(finished, [(401, "authentication_error", None, "/openai/v1/chat/completions")])

    def test_failing_observer_is_detached(self) -> None:
        """An observer that raises is dropped and logged; the stream itself is unharmed."""

        class Broken:
            def response_started(self, exchange: Any, headers: Any) -> None:
                raise RuntimeError("observer bug")

            def response_chunk(self, data: bytes) -> None:
                raise AssertionError("detached observers get no chunks")

            def exchange_finished(self, exchange: Any) -> None:
                raise AssertionError("detached observers get no end")

        gateway = make_gateway(self, observe=lambda exchange, body: Broken())
        client = self._stream(gateway)
        self.assertEqual((client.response().body, client.response().complete), (b"data: 1\n\ndata: 2\n\n", True))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ParseResponseTests(SynchronousTestCase):
    """The harness's response parser, which the tests above rely on."""

    def test_truncated_chunked_body(self) -> None:
        """A chunked body without its last chunk parses as incomplete."""
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"abc")
        self.assertEqual((parse_response(raw).body, parse_response(raw).complete), (b"abc", False))
        self.assertTrue(parse_response(raw + LAST_CHUNK).complete)
