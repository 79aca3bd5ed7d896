"""Tests of the request record: its checks, its JSON line form, and what it refuses to hold."""

import json
import os
from dataclasses import fields, replace

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.store.migrate import migrations_dir
from smoltbot.records.row import COLUMN_SPEC, COLUMNS, MAX_TEXT, RecordFormatError, RequestRecord, new_instance_id

SHA = "ab" * 32


def make_record(n: int = 0, **fields) -> RequestRecord:
    """A complete, valid record; `n` makes its request id unique."""
    values = dict(
        request_id=f"req-{n:06d}",
        agent_id="smolt-0123abcd",
        session_id="0123abcd01234567-493000",
        provider="anthropic",
        model="claude-sonnet-4-5",
        method="POST",
        path="/v1/messages",
        status=200,
        streaming=True,
        ttfb_ms=120.5,
        duration_ms=2400.25,
        bytes_in=512,
        bytes_out=8192,
        input_tokens=100,
        output_tokens=250,
        cache_read_tokens=0,
        cache_creation_tokens=10,
        reasoning_tokens=None,
        stop_reason="end_turn",
        tool_calls=1,
        thinking_present=True,
        thinking_sha256=SHA,
        error_type=None,
        gateway_version="0.1.0",
        instance_id="host-1-abcdef",
        created_at=1_760_000_000.0 + n,
    )
    values.update(fields)
    return RequestRecord(**values)


class RecordTests(SynchronousTestCase):
    def test_columns_match_the_table(self):
        """The column spec is the `request_records` table of the initial migration: names in order, SQL types, NOT NULL."""
        sql = (migrations_dir() / "0001_initial.sql").read_text()
        table = sql.split("CREATE TABLE request_records (", 1)[1].split(");", 1)[0]
        declared = []
        for line in table.strip().splitlines():
            words = line.strip().rstrip(",").split()
            if not words:
                continue
            ends = [i for i, word in enumerate(words) if word in ("PRIMARY", "NOT", "DEFAULT", "CHECK", "UNIQUE")]
            sql_type = " ".join(words[1 : ends[0] if ends else None])
            required = "PRIMARY KEY" in line or "NOT NULL" in line
            declared.append((words[0], sql_type, required))
        self.assertEqual([(c.name, c.sql_type, c.required) for c in COLUMN_SPEC], declared)

    def test_columns_are_the_fields(self):
        """The column spec names the record's fields, in order, so checks and inserts cover every field."""
        self.assertEqual(COLUMNS, tuple(field.name for field in fields(RequestRecord)))

    def test_json_round_trip(self):
        """A record survives to_json/from_json unchanged, and None fields are left out of the line."""
        record = make_record(7)
        line = record.to_json()
        self.assertNotIn("\n", line)
        self.assertNotIn("reasoning_tokens", line)
        self.assertEqual(RequestRecord.from_json(line), record)
        self.assertEqual(RequestRecord.from_json(line.encode()), record)
        minimal = RequestRecord(request_id="r", provider="openai", method="GET", path="/v1/models", created_at=1.5e9)
        self.assertEqual(RequestRecord.from_json(minimal.to_json()), minimal)

    def test_strict_decoding(self):
        """Lines that are not exactly a record's JSON form raise RecordFormatError."""
        good = json.loads(make_record().to_json())
        bad_lines = [
            b"",
            b"not json",
            b'{"request_id": "r"',  # torn
            b"[1, 2]",
            b"\xff\xfe garbage",
            json.dumps({**good, "prompt": "hi"}),  # unknown field
            json.dumps({k: v for k, v in good.items() if k != "provider"}),  # missing required
            json.dumps({**good, "status": "200"}),
            json.dumps({**good, "input_tokens": 1.0}),
            json.dumps({**good, "input_tokens": True}),
            json.dumps({**good, "streaming": 1}),
            json.dumps({**good, "created_at": "2026-01-01"}),
            json.dumps({**good, "created_at": -1}),
            json.dumps({**good, "thinking_sha256": "xyz"}),
            json.dumps({**good, "request_id": ""}),
            "[" * 100_000,
        ]
        for line in bad_lines:
            self.assertRaises(RecordFormatError, RequestRecord.from_json, line)

    def test_checks_on_build(self):
        """Wrong types raise TypeError, bad ids and times ValueError; counts and durations that cannot be stored become None."""
        self.assertRaises(TypeError, make_record, status="200")
        self.assertRaises(TypeError, make_record, streaming=None)
        self.assertRaises(TypeError, make_record, provider=None)
        self.assertRaises(TypeError, make_record, bytes_in=1.5)
        self.assertRaises(ValueError, make_record, created_at=1e12)
        self.assertRaises(ValueError, make_record, created_at=float("nan"))
        self.assertRaises(ValueError, make_record, status=1000)
        self.assertRaises(ValueError, make_record, thinking_sha256="ABC")
        self.assertIsNone(make_record(input_tokens=2**31).input_tokens)
        self.assertIsNone(make_record(output_tokens=-1).output_tokens)
        self.assertIsNone(make_record(duration_ms=float("nan")).duration_ms)
        self.assertIsNone(make_record(ttfb_ms=-0.5).ttfb_ms)
        self.assertEqual(make_record(bytes_out=2**40).bytes_out, 2**40)
        self.assertEqual(make_record(ttfb_ms=3).ttfb_ms, 3.0)

    def test_text_made_storable(self):
        """Client-supplied text is cut to MAX_TEXT and cleared of NUL and lone surrogates; a query never stays in path."""
        record = make_record(model="m\x00" + "x" * 2000, stop_reason="a\ud800b", path="/v1beta/models/g:generate?key=SECRET")
        self.assertEqual(len(record.model), MAX_TEXT)
        self.assertNotIn("\x00", record.model)
        self.assertEqual(record.stop_reason, "a\ufffdb")
        self.assertEqual(record.path, "/v1beta/models/g:generate")
        self.assertNotIn("SECRET", record.to_json())
        self.assertEqual(RequestRecord.from_json(record.to_json().encode("utf-8")), record)
        self.assertEqual(replace(record, model="short").model, "short")

    def test_instance_id(self):
        """Instance ids name the host and process and differ between calls."""
        first, second = new_instance_id(), new_instance_id()
        self.assertNotEqual(first, second)
        self.assertIn(f"-{os.getpid()}-", first)
