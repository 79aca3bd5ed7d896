"""
The operator's read commands over what the gateway recorded: `smoltbot agents` (every agent
with its first and last sighting and request count) and `smoltbot requests` (the latest
request records, newest first). This module runs their queries (`smoltbot.store.queries`) and
owns their output, as an aligned text table or as JSON; `smoltbot.cli.main` only parses the
arguments.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable, Sequence

import psycopg2

from smoltbot.store.pool import Database, DatabaseError, Reactor, wait_connected
from smoltbot.logs import format_timestamp
from smoltbot.records.row import COLUMNS
from smoltbot.store.queries import agents as agent_queries, request_records
from smoltbot.util.errors import describe

# (heading, column, text width cap) of the `requests` table.
_REQUEST_TABLE = (
    ("TIME", "created_at", None),
    ("REQUEST", "request_id", 36),
    ("AGENT", "agent_id", None),
    ("PROVIDER", "provider", None),
    ("MODEL", "model", 32),
    ("STATUS", "status", None),
    ("STREAM", "streaming", None),
    ("MS", "duration_ms", None),
    ("TTFB", "ttfb_ms", None),
    ("IN", "input_tokens", None),
    ("OUT", "output_tokens", None),
    ("STOP", "stop_reason", 20),
    ("ERROR", "error_type", 24),
)


async def agents_command(
    reactor: Reactor,
    dsn: str,
    *,
    as_json: bool,
    write: Callable[[str], None],
    connect_timeout: float,
    query_timeout: float,
) -> int:
    """`smoltbot agents [--json]`; returns the exit status (1 with one line when the database fails)."""
    rows = await _query(reactor, dsn, agent_queries.LIST, (), write, connect_timeout, query_timeout)
    if rows is None:
        return 1
    agents = [
        {"id": agent_id, "first_seen": _iso(first), "last_seen": _iso(last), "requests": count}
        for agent_id, first, last, count in rows
    ]
    if as_json:
        write(json.dumps(agents, indent=2))
    elif not agents:
        write("no agents yet")
    else:
        table = [[a["id"], _short(a["first_seen"]), _short(a["last_seen"]), str(a["requests"])] for a in agents]
        for line in format_table(["AGENT", "FIRST SEEN", "LAST SEEN", "REQUESTS"], table, right=(3,)):
            write(line)
    return 0


async def requests_command(
    reactor: Reactor,
    dsn: str,
    *,
    agent: str | None,
    limit: int,
    as_json: bool,
    write: Callable[[str], None],
    connect_timeout: float,
    query_timeout: float,
) -> int:
    """`smoltbot requests [--agent ID] [--limit N] [--json]`; returns the exit status."""
    sql, params = request_records.latest(agent, limit)
    rows = await _query(reactor, dsn, sql, params, write, connect_timeout, query_timeout)
    if rows is None:
        return 1
    records = [_record(row) for row in rows]
    if as_json:
        write(json.dumps(records, indent=2))
    elif not records:
        write("no requests recorded" + (f" for {agent}" if agent else ""))
    else:
        headings = [heading for heading, _, _ in _REQUEST_TABLE]
        table = [[_cell(record, column, cap) for _, column, cap in _REQUEST_TABLE] for record in records]
        for line in format_table(headings, table, right=(5, 7, 8, 9, 10)):
            write(line)
    return 0


def format_table(headings: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Lines of an aligned text table, two spaces between columns; columns in `right` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return [line(headings), *(line(row) for row in rows)]


async def _query(
    reactor: Reactor,
    dsn: str,
    sql: str,
    params: tuple[Any, ...],
    write: Callable[[str], None],
    connect_timeout: float,
    query_timeout: float,
) -> list[tuple[Any, ...]] | None:
    """Run one read-only query on a one-connection pool; None after writing the reason it failed."""
    try:
        db = Database(dsn, reactor=reactor, pool_size=1, connect_timeout=connect_timeout, query_timeout=query_timeout)
    except ValueError as error:
        write(f"error: {error}")
        return None
    db.startService()
    try:
        await wait_connected(db, reactor, connect_timeout)
        return await db.run_query(sql, params, retry_idempotent=True)
    except (DatabaseError, psycopg2.Error) as error:
        hint = " (run `smoltbot migrate` first)" if getattr(error, "pgcode", None) == "42P01" else ""
        write(f"error: {describe(error)}{hint}")
        return None
    finally:
        await db.stopService()


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row))
    record["created_at"] = _iso(record["created_at"])
    return record


def _cell(record: dict[str, Any], column: str, cap: int | None) -> str:
    value = record[column]
    if value is None:
        return "-"
    if column == "created_at":
        return _short(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}"
    text = str(value)
    return text if cap is None or len(text) <= cap else text[: cap - 1] + "…"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment.timestamp())


def _short(iso: str | None) -> str:
    """`2026-01-15T12:00:00.123Z` as `2026-01-15 12:00:00Z`, for tables."""
    return "-" if iso is None else iso[:10] + " " + iso[11:19] + "Z"
