"""
Statements on `_schema_migrations`, the migration runner's own table (`smoltbot.store.migrate`):
which migration files were applied, when, with what checksum.

Every runner takes `LOCK` first in its transaction, so concurrent runners apply each file once.
"""

from __future__ import annotations

_LOCK_KEY = 0x736D6F6C74626F74  # b"smoltbot": the advisory lock serialising migration runners

CREATE = """
CREATE TABLE IF NOT EXISTS _schema_migrations (
    filename    text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""

LOCK = ("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
"""The transaction-scoped lock every runner holds while it creates the table or applies a file (sql, params)."""

EXISTS = "SELECT to_regclass('_schema_migrations') IS NOT NULL"
"""One row: whether the table exists yet (a database never migrated has none)."""

APPLIED = "SELECT filename, checksum, applied_at FROM _schema_migrations"

IS_APPLIED = "SELECT 1 FROM _schema_migrations WHERE filename = %s"

RECORD = "INSERT INTO _schema_migrations (filename, checksum) VALUES (%s, %s)"
