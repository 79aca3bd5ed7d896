"""
JSON-lines logging: one observer for Twisted's events, the stdlib `logging` of libraries and
stray prints, so every line on stdout is one JSON object (DESIGN §1.4).

Line shape: {"timestamp","level","service","message", ...structured fields}. Levels are
`debug`, `info`, `warn`, `error`; LOG_LEVEL filters. Structured fields are the keyword
arguments a caller passes to `Logger` methods, kept only when they are plain JSON values.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

_LEVEL_NAMES = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "error",
}
_LEVELS_BY_NAME = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}

# Event keys that belong to the logging machinery, never to the caller.
_INTERNAL_KEYS = frozenset({"system", "isError", "message", "format", "why", "failure", "printed", "time", "factory", "protocol"})
_PLAIN = (str, int, float, bool, type(None))

# Twisted announces every factory start and stop at info level; they are noise for an operator.
_CHATTY_PREFIXES = ("Starting factory", "Stopping factory", "Starting protocol", "Stopping protocol")


def format_timestamp(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as every log line and JSON body uses."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _fields(event: dict) -> dict[str, Any]:
    fields = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL_KEYS:
            continue
        if isinstance(value, _PLAIN):
            fields[key] = value
    return fields


def _message(event: dict) -> str:
    if event.get("log_format") is None and "message" in event:
        # twisted.python.log.msg() events carry their text as a tuple of strings.
        return " ".join(str(part) for part in event["message"])
    text = formatEvent(event)
    if text.startswith("Unable to format event"):
        return str(event.get("log_format"))
    return text


@implementer(ILogObserver)
class JsonLineObserver:
    """Write each event as one JSON line to `out`, flushing per line (journald and Docker read it live)."""

    def __init__(self, out: IO[str], service: str, clock: Callable[[], float] = time.time) -> None:
        self._out = out
        self._service = service
        self._clock = clock

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if event.get("isError") and level < LogLevel.error:
            level = LogLevel.error
        line = {
            "timestamp": format_timestamp(event.get("log_time") or self._clock()),
            "level": _LEVEL_NAMES.get(level, "info"),
            "service": self._service,
            "message": _message(event),
        }
        for key, value in _fields(event).items():
            line.setdefault(key, value)
        failure = event.get("log_failure")
        if failure is not None:
            line["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            if level >= LogLevel.error:
                line["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
        self._out.flush()


def _demote_chatter(event: dict) -> PredicateResult:
    format_string = event.get("log_format") or ""
    if isinstance(format_string, str) and format_string.startswith(_CHATTY_PREFIXES):
        event["log_level"] = LogLevel.debug
    return PredicateResult.maybe


def make_observer(out: IO[str], service: str, level: str) -> ILogObserver:
    """The daemon's one log observer: JSON lines at `level` and above."""
    return FilteringLogObserver(
        JsonLineObserver(out, service),
        [_demote_chatter, LogLevelFilterPredicate(defaultLogLevel=_LEVELS_BY_NAME[level])],
    )


class _TwistedHandler(logging.Handler):
    """Route stdlib `logging` records into Twisted's log publisher, so they become JSON lines too."""

    _LEVELS = {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }

    def emit(self, record: logging.LogRecord) -> None:
        level = self._LEVELS.get(record.levelno) or (LogLevel.debug if record.levelno < logging.INFO else LogLevel.error)
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        globalLogPublisher(
            {
                "log_format": "{log_text}",
                "log_text": text,
                "log_level": level,
                "log_namespace": record.name,
                "log_time": record.created,
                "logger": record.name,
            }
        )


def bridge_stdlib_logging(level: str) -> None:
    """Send the stdlib `logging` of libraries (httpx, asyncio, ...) through the JSON observer."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TwistedHandler):
            root.removeHandler(handler)
    root.addHandler(_TwistedHandler())
    root.setLevel({"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[level])


def write_fatal(message: str, service: str, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
    """
    Report a startup failure before (or instead of) the log system: plainly on stderr and as one
    JSON line on stdout, so both a person at a terminal and a log pipeline see it.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    stderr.write(message.rstrip("\n") + "\n")
    stderr.flush()
    JsonLineObserver(stdout, service)({"log_format": "{log_text}", "log_text": message, "log_level": LogLevel.error})

