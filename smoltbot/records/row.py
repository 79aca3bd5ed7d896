"""
The request record: one row of `request_records` per proxied request (DESIGN §3), and its JSON
line form in the recorder's spool.

A `RequestRecord` holds metadata only: ids, provider, model, timings, sizes, token usage, stop
reason, whether thinking was present and its SHA-256, an error type. It has no field that could
hold a key, a prompt, a response or thinking text, and `path` never keeps a query string. Every
record is checked when it is built, so any record can be written to PostgreSQL and to the spool,
and a spool line that does not decode to a valid record is recognised as corrupt.

`COLUMN_SPEC` describes the table, column by column (name, SQL type, check, NOT NULL); times
(`timestamptz`) are unix seconds in a record and in its JSON line.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

MAX_TEXT = 512  # characters kept of any text field (model names and stop reasons come from clients)

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # PostgreSQL text refuses NUL; UTF-8 refuses lone surrogates


class RecordFormatError(ValueError):
    """A spool line is not the JSON form of a valid `RequestRecord`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestRecord:
    """
    What one proxied request did, in the columns of `request_records`.

    Times: `created_at` is when the request arrived (unix seconds); `ttfb_ms` and `duration_ms`
    are milliseconds from then to the response headers and to the end. Token counts are the
    provider's usage figures (None when it reported none). `error_type` is None for a request
    whose upstream answer was relayed whole.

    Building a record checks it: a field of the wrong type raises TypeError; an empty request id,
    a `created_at` that is no unix time, a malformed `thinking_sha256` or a status beyond 999
    raise ValueError. Values that come from clients and providers are made storable instead of
    refused: text is cut to `MAX_TEXT` characters with NUL and lone surrogates replaced, a count
    outside its column's range and a negative or non-finite duration become None (unknown), and
    a query string is cut off `path`.
    """

    request_id: str
    agent_id: str | None = None
    session_id: str | None = None
    provider: str
    model: str | None = None
    method: str
    path: str
    status: int | None = None
    streaming: bool = False
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None
    tool_calls: int | None = None
    thinking_present: bool | None = None
    thinking_sha256: str | None = None
    error_type: str | None = None
    gateway_version: str | None = None
    instance_id: str | None = None
    created_at: float

    def __post_init__(self) -> None:
        for name, _, check, required in COLUMN_SPEC:
            value = getattr(self, name)
            if value is None:
                if required:
                    raise TypeError(f"{name} is required")
                continue
            checked = check(name, value)
            if checked is not value:
                object.__setattr__(self, name, checked)
        if "?" in self.path:
            object.__setattr__(self, "path", self.path.split("?", 1)[0])
        if self.thinking_sha256 is not None and not _SHA256.fullmatch(self.thinking_sha256):
            raise ValueError("thinking_sha256 must be 64 lowercase hex digits")
        if not self.request_id:
            raise ValueError("request_id must not be empty")

    def to_json(self) -> str:
        """The record as one compact JSON object (no newline); fields that are None are left out."""
        return json.dumps(
            {name: value for name in COLUMNS if (value := getattr(self, name)) is not None},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, line: str | bytes) -> RequestRecord:
        """Decode `to_json`'s output; anything else (unknown, missing or mistyped fields) raises RecordFormatError."""
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise RecordFormatError("not a JSON object")
            unknown = data.keys() - _NAMES
            if unknown:
                raise RecordFormatError(f"unknown fields {sorted(unknown)}")
            return cls(**data)
        except RecordFormatError:
            raise
        except (ValueError, TypeError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            raise RecordFormatError(str(error)) from None


def _text(name: str, value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"{name} must be a str")
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub("\ufffd", value)
    return value


def _bounded(limit: int) -> Any:
    def check(name: str, value: Any) -> int | None:
        if type(value) is not int:
            raise TypeError(f"{name} must be an int")
        return value if 0 <= value <= limit else None

    return check


def _status(name: str, value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= 999:
        raise ValueError(f"{name} must be between 0 and 999")
    return value


def _float(name: str, value: Any) -> float:
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise TypeError(f"{name} must be a float")
    return value


def _duration(name: str, value: Any) -> float | None:
    value = _float(name, value)
    return value if math.isfinite(value) and value >= 0 else None


def _timestamp(name: str, value: Any) -> float:
    value = _float(name, value)
    if not 0 <= value < 1e11:  # also refuses NaN; 0 is a fake clock's start
        raise ValueError(f"{name} must be unix seconds")
    return value


def _flag(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{name} must be a bool")
    return value


class Column(NamedTuple):
    """
    One column of `request_records`: its name (a `RequestRecord` field), its SQL type as the
    migration declares it, the check a value must pass, and whether it is NOT NULL.
    """

    name: str
    sql_type: str
    check: Callable[[str, Any], Any]
    required: bool = False


# The one description of the table in Python: record checks follow it, the insert statement is
# built from it (`smoltbot.store.queries.request_records`), and a test holds it equal to the
# migration that creates the table. Integer columns are `integer` (tokens, counts) or `bigint` (bytes).
COLUMN_SPEC: tuple[Column, ...] = (
    Column("request_id", "text", _text, required=True),
    Column("agent_id", "text", _text),
    Column("session_id", "text", _text),
    Column("provider", "text", _text, required=True),
    Column("model", "text", _text),
    Column("method", "text", _text, required=True),
    Column("path", "text", _text, required=True),
    Column("status", "integer", _status),
    Column("streaming", "boolean", _flag, required=True),
    Column("ttfb_ms", "double precision", _duration),
    Column("duration_ms", "double precision", _duration),
    Column("bytes_in", "bigint", _bounded(_INT64)),
    Column("bytes_out", "bigint", _bounded(_INT64)),
    Column("input_tokens", "integer", _bounded(_INT32)),
    Column("output_tokens", "integer", _bounded(_INT32)),
    Column("cache_read_tokens", "integer", _bounded(_INT32)),
    Column("cache_creation_tokens", "integer", _bounded(_INT32)),
    Column("reasoning_tokens", "integer", _bounded(_INT32)),
    Column("stop_reason", "text", _text),
    Column("tool_calls", "integer", _bounded(_INT32)),
    Column("thinking_present", "boolean", _flag),
    Column("thinking_sha256", "text", _text),
    Column("error_type", "text", _text),
    Column("gateway_version", "text", _text),
    Column("instance_id", "text", _text),
    Column("created_at", "timestamptz", _timestamp, required=True),
)

COLUMNS: tuple[str, ...] = tuple(column.name for column in COLUMN_SPEC)
"""The `request_records` columns, in table order (and in the order of `RequestRecord`'s fields)."""
_NAMES = frozenset(COLUMNS)


def new_instance_id() -> str:
    """An id for this gateway process, kept in every record it writes: `<hostname>-<pid>-<6 hex>`."""
    return f"{socket.gethostname() or 'local'}-{os.getpid()}-{secrets.token_hex(3)}"
