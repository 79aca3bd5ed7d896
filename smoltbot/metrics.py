"""
Every Prometheus metric the gateway exposes, registered on one injected registry.

One `Metrics` object is built per process (a fresh one per test) and handed to whatever
increments it; `/metrics` renders its registry. Names are part of the contract (DESIGN §1.4).
"""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's metrics, bound to one `CollectorRegistry`."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self.build_info = Gauge("gateway_build_info", "Gateway version (value is always 1).", ["version"], registry=r)
        self.build_info.labels(version=version).set(1)

        # Proxy (provider traffic).
        self.requests = Counter(
            "gateway_requests", "Proxied requests by provider and response status.", ["provider", "status"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response finished.",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from request received to the upstream's response headers.",
            ["provider"],
            buckets=_TTFB_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "gateway_requests_in_flight", "Proxied requests being served now.", ["provider"], registry=r
        )
        self.request_bytes = Counter(
            "gateway_request_bytes", "Request body bytes received from clients.", ["provider"], registry=r
        )
        self.response_bytes = Counter(
            "gateway_response_bytes", "Response body bytes sent to clients.", ["provider"], registry=r
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens reported by providers' usage data.", ["provider", "kind"], registry=r
        )

        # Integrity analysis, caches, background work.
        self.aip_checks = Counter("gateway_aip_checks", "Integrity checks by verdict.", ["verdict"], registry=r)
        self.cache_operations = Counter(
            "gateway_cache_operations",
            "KV store operations by operation and result.",
            ["operation", "result"],
            registry=r,
        )
        self.background_tasks = Counter(
            "gateway_background_tasks", "Background tasks run, by task.", ["task"], registry=r
        )
        self.cron_runs = Counter("gateway_cron_runs", "Scheduler job runs by job and result.", ["job", "result"], registry=r)

        # Request records (recorder queue and spool).
        self.trace_queue_depth = Gauge(
            "gateway_trace_queue_depth", "Request records waiting in memory to be written.", registry=r
        )
        self.trace_spool_bytes = Gauge(
            "gateway_trace_spool_bytes", "Bytes of request records waiting in the on-disk spool.", registry=r
        )
        self.traces_written = Counter(
            "gateway_traces_written", "Request records written to PostgreSQL.", registry=r
        )
        self.traces_dropped = Counter(
            "gateway_traces_dropped", "Request records lost because neither PostgreSQL nor the spool took them.", registry=r
        )
        self.trace_spool_corrupt_lines = Counter(
            "gateway_trace_spool_corrupt_lines",
            "Spool lines skipped on replay because they were not valid request records.",
            registry=r,
        )
        self.agent_sightings_dropped = Counter(
            "gateway_agent_sightings_dropped",
            "Agent sightings not queued for PostgreSQL because too many were pending (re-queued on the next request).",
            registry=r,
        )
        self.trace_flush_duration = Histogram(
            "gateway_trace_flush_duration_seconds",
            "Time to write one batch of request records.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # Dependencies and daemon state.
        self.health_check_ok = Gauge(
            "gateway_health_check_ok", "Latest readiness probe result (1 ok, 0 failing).", ["check"], registry=r
        )
        self.health_check_latency = Gauge(
            "gateway_health_check_latency_seconds", "Latency of the latest readiness probe.", ["check"], registry=r
        )
        self.database_connections = Gauge(
            "gateway_database_connections", "PostgreSQL connections of the pool that are open.", registry=r
        )
        self.database_calls_waiting = Gauge(
            "gateway_database_calls_waiting", "Database calls queued for a free pool connection (bounded).", registry=r
        )
        self.agent_sightings_pending = Gauge(
            "gateway_agent_sightings_pending", "Agent inserts and last_seen updates waiting to be written (bounded).", registry=r
        )
        self.heartbeats = Counter("gateway_heartbeats", "Heartbeats sent, by result.", ["result"], registry=r)

    def render(self, accept_header: str | None) -> tuple[bytes, str]:
        """Return the exposition body and its content type for a scrape's Accept header."""
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type
