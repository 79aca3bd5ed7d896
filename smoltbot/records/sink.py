"""
From proxied exchange to request record: the observer the proxy attaches to every request.

It tees each relayed response chunk into the provider's extractor (usage, stop reason, tool
calls, thinking hash), and when the exchange ends it hands one `RequestRecord` to the recorder
and the agent's sighting to the registry. Everything here runs on the request's path, so it is
O(1) per call apart from the extractor's bounded parsing, and never touches a database.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from smoltbot.records.agents import AgentRegistry
from smoltbot.extract import Extract, ResponseExtractor, extractor_for, request_model, request_streaming
from smoltbot.metrics import Metrics
from smoltbot.proxy.exchange import OK, Exchange
from smoltbot.records.writer import Recorder
from smoltbot.records.row import RequestRecord

# What a response's extract contributes to its record.
_RESPONSE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "stop_reason",
    "tool_calls",
    "thinking_present",
    "thinking_sha256",
)

_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_creation", "cache_creation_tokens"),
    ("reasoning", "reasoning_tokens"),
)


def error_type_for(exchange: Exchange, extract: Extract | None) -> str | None:
    """
    The record's `error_type`: None for a response relayed whole with a 1xx–3xx status; else the
    upstream's status class (`upstream_4xx`, `upstream_5xx`), a mid-stream error event
    (`stream_error_event`), how the stream was cut (`client_disconnected`, `upstream_broken`,
    `upstream_idle_timeout`), or the gateway's own error type (`upstream_timeout`, ...).
    """
    if exchange.outcome != OK:
        return exchange.outcome or "unknown"
    if extract is not None and extract.error_type:
        return extract.error_type
    if exchange.status >= 500:
        return "upstream_5xx"
    if exchange.status >= 400:
        return "upstream_4xx"
    return None


def _header(headers: Headers, name: bytes) -> str | None:
    value = headers.getRawHeaders(name)
    return value[0].decode("latin-1") if value else None


class RecordingObserver:
    """Watches one exchange: feeds the extractor, then reports the finished exchange."""

    __slots__ = ("_recording", "_model", "_streaming", "_extractor")

    def __init__(self, recording: RequestRecording, exchange: Exchange, body: bytes) -> None:
        self._recording = recording
        self._model = request_model(exchange.provider, exchange.path, body)
        self._streaming = request_streaming(exchange.provider, exchange.path, body)
        self._extractor: ResponseExtractor | None = None

    def response_started(self, exchange: Exchange, headers: Headers) -> None:
        self._extractor = extractor_for(
            exchange.provider,
            streaming=self._streaming,
            content_type=_header(headers, b"content-type"),
            content_encoding=_header(headers, b"content-encoding"),
        )

    def response_chunk(self, data: bytes) -> None:
        self._extractor.feed(data)  # type: ignore[union-attr]  # chunks only follow response_started

    def exchange_finished(self, exchange: Exchange) -> None:
        extract = self._extractor.finish(exchange.outcome == OK) if self._extractor is not None else None
        self._extractor = None
        self._recording.finished(exchange, self._model, self._streaming, extract)


class RequestRecording:
    """
    The proxy's observer factory: one `RecordingObserver` per request, and the sink that turns
    finished exchanges into records, agent sightings and token metrics.
    """

    log = Logger()

    def __init__(
        self,
        *,
        recorder: Recorder,
        agents: AgentRegistry,
        metrics: Metrics,
        gateway_version: str,
        instance_id: str,
    ) -> None:
        self._recorder = recorder
        self._agents = agents
        self._metrics = metrics
        self._gateway_version = gateway_version
        self._instance_id = instance_id

    def __call__(self, exchange: Exchange, body: bytes) -> RecordingObserver:
        return RecordingObserver(self, exchange, body)

    def finished(self, exchange: Exchange, model: str | None, streaming: bool, extract: Extract | None) -> None:
        """Record one finished exchange (the thinking text, if any, is dropped here)."""
        identity = exchange.identity
        if identity is not None:
            self._agents.seen(identity.agent_id, identity.agent_hash, exchange.started)
        response: dict[str, Any] = {"model": model}
        if extract is not None:
            response = {field: getattr(extract, field) for field in _RESPONSE_FIELDS}
            response["model"] = extract.model or model
            self._count_tokens(exchange.provider, extract)
        ttfb, duration = exchange.ttfb, exchange.duration
        self._recorder.record(
            RequestRecord(
                request_id=exchange.request_id,
                agent_id=identity.agent_id if identity is not None else None,
                session_id=identity.session_id if identity is not None else None,
                provider=exchange.provider,
                method=exchange.method,
                path=exchange.path,
                status=exchange.status or None,
                streaming=streaming,
                ttfb_ms=ttfb * 1000.0 if ttfb is not None else None,
                duration_ms=duration * 1000.0 if duration is not None else None,
                bytes_in=exchange.bytes_in,
                bytes_out=exchange.bytes_out,
                error_type=error_type_for(exchange, extract),
                gateway_version=self._gateway_version,
                instance_id=self._instance_id,
                created_at=exchange.started,
                **response,
            )
        )

    def _count_tokens(self, provider: str, extract: Extract) -> None:
        for kind, field in _TOKEN_KINDS:
            value = getattr(extract, field)
            if value:
                self._metrics.tokens.labels(provider=provider, kind=kind).inc(value)
