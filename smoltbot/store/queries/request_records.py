"""
Statements on `request_records` (sql/0001_initial.sql): the recorder's batch insert and the
`smoltbot requests` listing. Both follow the column spec in `smoltbot.records.row`.
"""

from __future__ import annotations

from typing import Any

from smoltbot.records.row import COLUMN_SPEC, COLUMNS, Column


def _json_type(column: Column) -> str:
    """The column's type in a record's JSON form: times are unix seconds there."""
    return "double precision" if column.sql_type == "timestamptz" else column.sql_type


def _from_json(column: Column) -> str:
    return f"to_timestamp(r.{column.name})" if column.sql_type == "timestamptz" else f"r.{column.name}"


INSERT = (
    f"WITH written AS (INSERT INTO request_records ({','.join(COLUMNS)})"
    f" SELECT {','.join(_from_json(column) for column in COLUMN_SPEC)}"
    f" FROM json_to_recordset(%s::json) AS r ({','.join(f'{c.name} {_json_type(c)}' for c in COLUMN_SPEC)})"
    " ON CONFLICT (request_id) DO NOTHING RETURNING 1) SELECT count(*) FROM written"
)
"""
Insert a batch of records, given as one parameter: a JSON array of their `to_json` lines (as in
the spool), expanded server-side; twice the throughput of a VALUES list, at half the client CPU.
Idempotent (a request id already stored is skipped); fires with one row: how many were written.
"""


def latest(agent_id: str | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The newest `limit` records (of one agent, if given), newest first, every column in table order."""
    where = "WHERE agent_id = %s " if agent_id else ""
    sql = f"SELECT {','.join(COLUMNS)} FROM request_records {where}ORDER BY created_at DESC, request_id LIMIT %s"
    return sql, (agent_id, limit) if agent_id else (limit,)
