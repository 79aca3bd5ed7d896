"""
Request records end to end: the whole daemon (in process, real PostgreSQL, fake provider on
loopback) records every proxied request with the right metadata, survives a database outage
without losing or doubling a record, registers a new agent once, and stores or logs nothing
secret.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import treq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed

from smoltbot.config import load_config
from smoltbot.app.compose import build_service
from smoltbot.extract import extractor_for
from smoltbot.fakeprovider import FakeProvider, Knobs
from smoltbot.logs import make_observer
from tests.faultproxy import FaultProxy
from tests.process import free_port
from tests.support import REDIS_URL, new_database

SQL = Path(__file__).resolve().parent.parent / "sql"

ANTHROPIC = {
    "model": "claude-sonnet-4-20250514",
    "max_tokens": 2048,
    "messages": [{"role": "user", "content": "hi"}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
}
OPENAI = {
    "model": "gpt-5",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "reasoning_effort": "low",
    "stream_options": {"include_usage": True},
}
GEMINI = {
    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
    "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
}


def migrated_database() -> str:
    """A fresh database with every migration applied."""
    dsn = new_database()
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            for path in sorted(SQL.glob("*.sql")):
                cursor.execute(path.read_text())
    finally:
        connection.close()
    return dsn


def query(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement synchronously (test inspection only, never the daemon's way)."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


def call(provider: str, key: str, stream: bool, body: dict | None = None, model: str = "gemini-2.5-pro") -> tuple[str, dict, bytes]:
    """Path, headers and body of one provider request carrying `key`."""
    if provider == "anthropic":
        payload = dict(body or ANTHROPIC, stream=stream)
        return "/anthropic/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, json.dumps(payload).encode()
    if provider == "openai":
        payload = dict(body or OPENAI, stream=stream)
        return "/openai/v1/chat/completions", {"authorization": f"Bearer {key}"}, json.dumps(payload).encode()
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/gemini/v1beta/models/{model}:{method}", {"x-goog-api-key": key}, json.dumps(body or GEMINI).encode()


class RecordingHarness(TestCase):
    """A whole gateway in this process, its database behind a FaultProxy, a fake provider upstream."""

    timeout = 60

    async def start(self, **env: str) -> None:
        self.dsn = migrated_database()
        self.db_proxy = FaultProxy(reactor, "127.0.0.1", 5432)
        proxy_port = await self.db_proxy.start()
        self.addCleanup(self.db_proxy.stop)
        self.fake_clock = Clock()
        self.fake = FakeProvider(self.fake_clock, Knobs(events=6, event_size=24))
        fake_port = reactor.listenTCP(0, self.fake.factory(), interface="127.0.0.1")
        self.addCleanup(self.fake.when_idle)
        self.addCleanup(fake_port.stopListening)
        upstream = f"http://127.0.0.1:{fake_port.getHost().port}"
        self.state_dir = tempfile.mkdtemp(prefix="smoltbot-test-state-")
        config = load_config(
            {
                "DATABASE_URL": self.dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy_port}"),
                "AIP_ENABLED": "false",
                "HEARTBEAT_URL": "",
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                "SMOLTBOT_ROLE": "gateway",
                "SMOLTBOT_STATE_DIR": self.state_dir,
                "RECORDER_FLUSH_INTERVAL_SECONDS": "0.05",
                "RECORDER_WRITE_TIMEOUT_SECONDS": "1",
                "AGENT_LAST_SEEN_INTERVAL_SECONDS": "1",
                "DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
                "ANTHROPIC_UPSTREAM_URL": upstream,
                "OPENAI_UPSTREAM_URL": upstream,
                "GEMINI_UPSTREAM_URL": upstream,
                **env,
            }
        )
        self.service = build_service(config, reactor)
        self.service.startService()
        self.addCleanup(self.stop)
        self.base = f"http://127.0.0.1:{self.service.listening_port}"
        await self.service.parts.store.database.when_connected()

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()

    async def send(self, provider: str, key: str, stream: bool, headers: dict | None = None, **kw: Any) -> tuple[int, bytes, dict]:
        """One request through the gateway; fires with (status, body, response headers)."""
        path, base_headers, body = call(provider, key, stream, **kw)
        response = await self.paced(
            treq.post(self.base + path, data=body, headers={**base_headers, **(headers or {})}, persistent=False)
        )
        content = await self.paced(treq.content(response))
        headers = {k.decode().lower(): [v.decode("latin-1") for v in values] for k, values in response.headers.getAllRawHeaders()}
        return response.code, content, headers

    async def paced(self, work: defer.Deferred) -> Any:
        """Wait for `work` while moving the fake provider's clock on, so its streams progress."""
        while not work.called:
            self.fake_clock.advance(0.01)
            await deferLater(reactor, 0.002)
        return await work

    def records(self, where: str = "TRUE", params: Any = None) -> list[dict]:
        columns = [c for (c,) in query(self.dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'request_records' ORDER BY ordinal_position")]
        rows = query(self.dsn, f"SELECT {', '.join(columns)} FROM request_records WHERE {where}", params)
        return [dict(zip(columns, row)) for row in rows]

    async def until(self, condition: Any, attempts: int = 400) -> None:
        """Wait (bounded) for the recorder to catch up, in steps of its flush interval."""
        for _ in range(attempts):
            if condition():
                return
            await deferLater(reactor, 0.05)
        self.fail("condition never held")


class RecordContentTests(RecordingHarness):
    """The metadata of each provider's JSON and SSE responses lands in its record."""

    async def test_each_provider_json_and_sse(self) -> None:
        """Tokens, stop reason, tool calls, thinking and its hash are recorded as the client saw them."""
        await self.start()
        key = f"sk-test-{uuid.uuid4().hex}"
        expected = {}
        for provider in ("anthropic", "openai", "gemini"):
            for stream in (False, True):
                status, body, headers = await self.send(provider, key, stream)
                self.assertEqual(status, 200, body[:300])
                extractor = extractor_for(
                    provider, streaming=stream, content_type=headers["content-type"][0], content_encoding=None
                )
                extractor.feed(body)
                expected[headers["x-smoltbot-request-id"][0]] = (provider, stream, extractor.finish(True), body)
        await self.stop()
        records = {r["request_id"]: r for r in self.records()}
        self.assertEqual(set(records), set(expected))
        for request_id, (provider, stream, extract, body) in expected.items():
            record = records[request_id]
            self.assertEqual((record["provider"], record["streaming"], record["status"]), (provider, stream, 200))
            self.assertIsNone(record["error_type"], record)
            for field in ("input_tokens", "output_tokens", "reasoning_tokens", "cache_read_tokens", "stop_reason", "tool_calls", "thinking_present", "thinking_sha256"):
                self.assertEqual(record[field], getattr(extract, field), (provider, stream, field))
            self.assertIsNotNone(record["output_tokens"], (provider, stream))
            self.assertEqual(record["bytes_out"], len(body))
            self.assertEqual(record["agent_id"], "smolt-" + hashlib.sha256(key.encode()).hexdigest()[:8])
            self.assertTrue(record["session_id"].startswith(hashlib.sha256(key.encode()).hexdigest()[:16] + "-"))
            self.assertIsNotNone(record["ttfb_ms"])
            self.assertGreaterEqual(record["duration_ms"], record["ttfb_ms"])
            self.assertNotIn("?", record["path"])
        json_anthropic = next(r for r, (p, s, _, _) in expected.items() if p == "anthropic" and not s)
        usage = json.loads(expected[json_anthropic][3])["usage"]
        self.assertEqual(records[json_anthropic]["input_tokens"], usage["input_tokens"])
        self.assertEqual(records[json_anthropic]["stop_reason"], "tool_use")
        self.assertTrue(records[json_anthropic]["thinking_present"])
        thinking = "\n\n---\n\n".join(b["thinking"] for b in json.loads(expected[json_anthropic][3])["content"] if b["type"] == "thinking")
        self.assertEqual(records[json_anthropic]["thinking_sha256"], hashlib.sha256(thinking.encode()).hexdigest())
        self.assertEqual(records[json_anthropic]["model"], "claude-sonnet-4-20250514")
        gemini_sse = next(r for r, (p, s, _, _) in expected.items() if p == "gemini" and s)
        self.assertEqual(records[gemini_sse]["model"], "gemini-2.5-pro")
        self.assertGreater(records[gemini_sse]["reasoning_tokens"], 0)

    async def test_failures_are_typed(self) -> None:
        """A stream broken midway, a mid-stream error event, an upstream 500 and a missing key each get their error type."""
        await self.start()
        key = "sk-test-failures"
        with self.assertRaises(ResponseFailed):  # the client must see a broken stream, not a clean end
            await self.send("anthropic", key, True, headers={"x-fake-drop-after": "5", "x-fake-delay-ms": "10"})
        await self.send("anthropic", key, True, headers={"x-fake-error-after": "5"})
        status, _, _ = await self.send("openai", key, False, headers={"x-fake-status": "500"})
        self.assertEqual(status, 500)
        response = await treq.post(self.base + "/anthropic/v1/messages", data=b"{}", persistent=False)
        await treq.content(response)
        self.assertEqual(response.code, 401)
        await self.stop()
        by_type = {r["error_type"]: r for r in self.records()}
        self.assertEqual(set(by_type), {"upstream_broken", "stream_error_event", "upstream_5xx", "authentication_error"})
        broken = by_type["upstream_broken"]
        self.assertIsNotNone(broken["input_tokens"])  # message_start arrived before the cut
        self.assertTrue(broken["streaming"])
        self.assertIsNone(by_type["authentication_error"]["agent_id"])
        self.assertEqual(by_type["upstream_5xx"]["status"], 500)


class OutageTests(RecordingHarness):
    """PostgreSQL going away never fails a request, loses a record or writes one twice."""

    async def test_outage_in_the_middle_of_a_series(self) -> None:
        """Requests during an outage succeed; after recovery every record is in the table exactly once."""
        await self.start()
        sent = []
        for i in range(30):
            if i == 10:
                self.db_proxy.mode = "refuse"
                self.db_proxy.cut()
            if i == 20:
                self.db_proxy.mode = "relay"
            status, _, headers = await self.send(("anthropic", "openai", "gemini")[i % 3], "sk-outage", i % 2 == 0)
            self.assertEqual(status, 200)
            sent.append(headers["x-smoltbot-request-id"][0])
        await self.until(lambda: query(self.dsn, "SELECT count(*) FROM request_records")[0][0] >= len(sent))
        rows = query(self.dsn, "SELECT request_id, count(*) FROM request_records GROUP BY request_id")
        self.assertEqual(sorted(r for r, _ in rows), sorted(sent))
        self.assertEqual({count for _, count in rows}, {1})
        await self.until(lambda: self.service.parts.records.recorder.spool_backlog.spool_bytes == 0)

    async def test_concurrent_first_requests_create_one_agent(self) -> None:
        """Many simultaneous first requests of a new agent leave exactly one agents row."""
        await self.start()
        key = f"sk-new-agent-{uuid.uuid4().hex}"
        results = await self.paced(defer.gatherResults([defer.ensureDeferred(self.send("openai", key, False)) for _ in range(20)]))
        self.assertEqual({status for status, _, _ in results}, {200})
        agent_hash = hashlib.sha256(key.encode()).hexdigest()[:16]
        await self.stop()
        rows = query(self.dsn, "SELECT id, last_seen FROM agents WHERE agent_hash = %s", (agent_hash,))
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][0], "smolt-" + agent_hash[:8])
        self.assertIsNotNone(rows[0][1])


class SecretsTests(RecordingHarness):
    """Keys, prompts, responses and thinking text reach no table, spool, Redis key, log line or metric."""

    async def test_markers_never_stored_or_logged(self) -> None:
        """Unique markers sent through every provider's JSON and SSE paths appear nowhere the gateway writes."""
        out = io.StringIO()
        observer = make_observer(out, "smoltbot-gateway", "debug")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await self.start(LOG_LEVEL="debug", REDIS_URL=REDIS_URL)
        run = uuid.uuid4().hex[:12]
        markers = {
            "key": f"sk-KEYMARKER-{run}",
            "prompt": f"PROMPTMARKER{run}",
            "reply": f"REPLYMARKER{run}",
        }
        prompts = {
            "anthropic": dict(ANTHROPIC, messages=[{"role": "user", "content": markers["prompt"]}]),
            "openai": dict(OPENAI, messages=[{"role": "user", "content": markers["prompt"]}]),
            "gemini": dict(GEMINI, contents=[{"role": "user", "parts": [{"text": markers["prompt"]}]}]),
        }
        bodies = []
        for i, provider in enumerate(("anthropic", "openai", "gemini")):
            for stream in (False, True):
                if provider == "gemini" and stream:
                    self.db_proxy.mode = "refuse"  # some records take the spool path
                    self.db_proxy.cut()
                status, body, _ = await self.send(
                    provider, markers["key"], stream, body=prompts[provider], headers={"x-fake-marker": markers["reply"]}
                )
                self.assertEqual(status, 200)
                bodies.append(body)
        gemini_key = f"/gemini/v1beta/models/gemini-2.5-pro:generateContent?key={markers['key']}"
        response = await self.paced(treq.post(self.base + gemini_key, data=json.dumps(prompts["gemini"]).encode(), persistent=False))
        await self.paced(treq.content(response))
        self.assertEqual(response.code, 200)
        self.assertTrue(any(markers["reply"].encode() in body for body in bodies))  # the markers did travel
        await self.until(lambda: self.service.parts.records.recorder.spool_backlog.spool_bytes > 0)
        spool = b"".join(p.read_bytes() for p in Path(self.service.config.recorder.spool_dir).rglob("*") if p.is_file())
        metrics = await (await treq.get(self.base + "/metrics", persistent=False)).content()
        self.db_proxy.mode = "relay"
        await self.until(lambda: len(self.records()) == 7)
        await self.stop()

        stored = query(
            self.dsn,
            "SELECT string_agg(t::text, ' ') FROM request_records t UNION ALL SELECT string_agg(t::text, ' ') FROM agents t",
        )
        redis_text = await self.redis_dump()
        places = {
            "tables": " ".join(str(s) for (s,) in stored),
            "spool": spool.decode("utf-8", "replace"),
            "redis": redis_text,
            "log": out.getvalue(),
            "metrics": metrics.decode(),
        }
        self.assertIn('"level": "debug"', places["log"])
        self.assertGreater(len(places["spool"]), 0)
        for place, text in places.items():
            for name, marker in markers.items():
                self.assertNotIn(marker, text, f"{name} marker found in {place}")
        self.assertEqual(len(self.records()), 7)

    async def redis_dump(self) -> str:
        """Every key and string value in the Redis the gateway was given."""
        import txredisapi

        connection = await txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
        try:
            cursor, seen = 0, []
            while True:
                cursor, keys = await connection.scan(cursor, count=1000)
                for key in keys:
                    seen.append(str(key))
                    if await connection.type(key) == "string":
                        seen.append(str(await connection.get(key)))
                if int(cursor) == 0:
                    return " ".join(seen)
        finally:
            await connection.disconnect()


class DisabledTests(RecordingHarness):
    async def test_recorder_off(self) -> None:
        """With RECORDER_ENABLED=false requests are proxied and nothing is recorded or registered."""
        await self.start(RECORDER_ENABLED="false")
        self.assertIsNone(self.service.parts.records)
        status, _, _ = await self.send("anthropic", "sk-off", False)
        self.assertEqual(status, 200)
        await self.stop()
        self.assertEqual(self.records(), [])
        self.assertEqual(query(self.dsn, "SELECT count(*) FROM agents"), [(0,)])
