"""Tests for JSON-lines logging: shape, levels, filtering, stdlib bridge, fatal startup lines."""

import io
import json
import logging

from twisted.logger import LogLevel, LogPublisher, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.logs import JsonLineObserver, bridge_stdlib_logging, format_timestamp, make_observer, write_fatal


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


class JsonLineTests(SynchronousTestCase):
    def setUp(self):
        self.out = io.StringIO()
        self.publisher = LogPublisher()
        self.log = Logger(namespace="test", observer=self.publisher)

    def observe(self, level="info"):
        self.publisher.addObserver(make_observer(self.out, "smoltbot-gateway", level))

    def test_shape(self):
        """Each event is one JSON object with timestamp, level, service, message and its named fields."""
        self.observe()
        self.log.info("upstream answered {status}", status=200, request_id="r-1")
        (line,) = lines(self.out)
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["service"], "smoltbot-gateway")
        self.assertEqual(line["message"], "upstream answered 200")
        self.assertEqual((line["status"], line["request_id"]), (200, "r-1"))
        self.assertRegex(line["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_levels_named_and_filtered(self):
        """LOG_LEVEL=warn drops debug and info; warn and error (critical too) pass with DESIGN's names."""
        self.observe("warn")
        self.log.debug("d")
        self.log.info("i")
        self.log.warn("w")
        self.log.error("e")
        self.log.critical("c")
        self.assertEqual([l["level"] for l in lines(self.out)], ["warn", "error", "error"])

    def test_debug_level_shows_debug(self):
        """LOG_LEVEL=debug lets debug lines through."""
        self.observe("debug")
        self.log.debug("detail {n}", n=1)
        self.assertEqual(lines(self.out)[0]["level"], "debug")

    def test_failure_rendered_as_error_and_traceback(self):
        """log.failure gives an error line with the exception type and message."""
        self.observe()
        self.log.failure("it broke", failure=Failure(ValueError("bad value")))
        (line,) = lines(self.out)
        self.assertEqual(line["level"], "error")
        self.assertEqual(line["error"], "ValueError: bad value")
        self.assertIn("Traceback", line["traceback"])

    def test_non_plain_fields_left_out(self):
        """Objects that are not plain JSON values are not dumped into the line."""
        self.observe()
        self.log.info("x", thing=object(), n=None)
        (line,) = lines(self.out)
        self.assertNotIn("thing", line)
        self.assertIn("n", line)

    def test_factory_chatter_demoted(self):
        """Twisted's 'Starting factory' lines are debug, hidden at info."""
        self.observe()
        self.log.info("Starting factory {factory!r}", factory=object())
        self.assertEqual(self.out.getvalue(), "")

    def test_legacy_log_msg_events(self):
        """Events in twisted.python.log's legacy shape become JSON lines with their text."""
        JsonLineObserver(self.out, "s")({"message": ("hello", "world"), "isError": 0, "log_level": LogLevel.info})
        self.assertEqual(lines(self.out)[0]["message"], "hello world")


class StdlibBridgeTests(SynchronousTestCase):
    def test_stdlib_records_reach_the_observer(self):
        """A library's stdlib logging record is published as a Twisted event at the mapped level."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bridge_stdlib_logging("info")
        logging.getLogger("somelib").warning("careful %s", "now")
        logging.getLogger("somelib").debug("hidden")
        mine = [e for e in events if e.get("log_namespace") == "somelib"]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["log_level"], LogLevel.warn)
        out = io.StringIO()
        JsonLineObserver(out, "s")(mine[0])
        self.assertEqual(lines(out)[0]["message"], "careful now")
        self.assertNotIn("log_text", lines(out)[0])


class FatalTests(SynchronousTestCase):
    def test_plain_on_stderr_and_json_on_stdout(self):
        """A startup failure is written plainly to stderr and as one JSON error line to stdout."""
        out, err = io.StringIO(), io.StringIO()
        write_fatal("EnvValidationError: Missing required environment variables:\n  DATABASE_URL", "smoltbot-gateway", out, err)
        self.assertTrue(err.getvalue().startswith("EnvValidationError: Missing"))
        (line,) = lines(out)
        self.assertEqual(line["level"], "error")
        self.assertIn("DATABASE_URL", line["message"])


class TimestampTests(SynchronousTestCase):
    def test_format(self):
        """Timestamps are ISO 8601 UTC with milliseconds."""
        self.assertEqual(format_timestamp(1768478400.5), "2026-01-15T12:00:00.500Z")
