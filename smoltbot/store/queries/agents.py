"""
Statements on `agents` (sql/0001_initial.sql): the registry's batched insert-if-absent and
`last_seen` update, and the `smoltbot agents` listing.
"""

from __future__ import annotations

from typing import Any

_INSERT = (
    "INSERT INTO agents (id, agent_hash, first_seen, last_seen) VALUES {rows} ON CONFLICT DO NOTHING RETURNING id"
)
_UPDATE = (
    "UPDATE agents SET last_seen = v.last_seen FROM (VALUES {rows}) AS v (id, last_seen)"
    " WHERE agents.id = v.id AND (agents.last_seen IS NULL OR agents.last_seen < v.last_seen) RETURNING agents.id"
)


def insert_new(agents: dict[str, tuple[str, float]]) -> tuple[str, list[Any]]:
    """
    Insert `agents` (id -> (hash, first sighting in unix seconds)) unless present; returns the
    ids it inserted. `ON CONFLICT DO NOTHING`: concurrent first sightings make one row.
    """
    params = [value for agent_id, (hash16, when) in agents.items() for value in (agent_id, hash16, when, when)]
    return _INSERT.format(rows=",".join(["(%s,%s,to_timestamp(%s),to_timestamp(%s))"] * len(agents))), params


def update_last_seen(agents: dict[str, float]) -> tuple[str, list[Any]]:
    """Move `last_seen` of `agents` (id -> unix seconds) forward, never back; returns the ids updated."""
    params = [value for item in agents.items() for value in item]
    return _UPDATE.format(rows=",".join(["(%s,to_timestamp(%s))"] * len(agents))), params


# Agents with their rows, and agents seen only in records (their row not written yet) too.
LIST = """
WITH counted AS (
    SELECT agent_id, count(*) AS requests, min(created_at) AS first_request, max(created_at) AS last_request
    FROM request_records WHERE agent_id IS NOT NULL GROUP BY agent_id
)
SELECT coalesce(a.id, c.agent_id) AS id,
       least(a.first_seen, c.first_request) AS first_seen,
       greatest(a.last_seen, c.last_request) AS last_seen,
       coalesce(c.requests, 0) AS requests
FROM agents a FULL JOIN counted c ON c.agent_id = a.id
ORDER BY last_seen DESC NULLS LAST, id
"""
"""Every agent with its first and last sighting and its request count, last seen first."""
