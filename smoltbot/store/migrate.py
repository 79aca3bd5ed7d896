"""
The schema migration runner behind `smoltbot migrate` (DESIGN §3).

Migrations are `NNNN_name.sql` files, shipped as the package `smoltbot.sql` (the top-level `sql/`
folder of a source tree). Each is applied once, in name order, in its own transaction together
with its `_schema_migrations` row; a transaction-scoped advisory lock makes concurrent runners
apply each file once. This module owns finding them (`migrations_dir`, `discover`), comparing
them with the database (`plan`, `migration_status`, `format_status`, `pending_migrations`),
applying them (`apply_pending`) and the command body (`migrate_command`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Mapping

import psycopg2
from txpostgres.txpostgres import Cursor

from smoltbot.store.pool import Database, DatabaseError, Reactor, wait_connected
from smoltbot.store.queries import schema_migrations
from smoltbot.util.errors import describe

_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """The migrations folder holds a file that cannot be a migration."""


@dataclass(frozen=True)
class Migration:
    """One migration file: its name, the SHA-256 hex digest of its bytes, and its SQL."""

    filename: str
    checksum: str
    sql: str


@dataclass(frozen=True)
class Status:
    """
    Files compared with the `_schema_migrations` table.

    `applied`: applied with the same checksum; `pending`: not applied yet, in order; `changed`:
    applied with another checksum; `missing`: applied but no such file; `applied_at`: when each
    applied file was.
    """

    applied: tuple[str, ...]
    pending: tuple[Migration, ...]
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    applied_at: Mapping[str, datetime] = field(default_factory=dict)


def migrations_dir() -> Traversable:
    """The shipped migrations: package `smoltbot.sql` when installed, else `sql/` beside the package."""
    try:
        shipped = importlib.resources.files("smoltbot.sql")
    except ModuleNotFoundError:
        shipped = None
    if shipped is not None and shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[2] / "sql"


def discover(directory: Traversable | str | os.PathLike[str]) -> list[Migration]:
    """
    Read every `*.sql` file in `directory`, sorted by name.

    Raises `MigrationError` for a `.sql` file not named `NNNN_name.sql` (lowercase letters,
    digits and `_`), for two files with the same number, or for a file that is not UTF-8.
    """
    root = Path(directory) if isinstance(directory, (str, os.PathLike)) else directory
    found = []
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not _NAME.match(entry.name):
            raise MigrationError(f"{entry.name}: a migration must be named NNNN_name.sql (name: a-z, 0-9, _)")
        data = entry.read_bytes()
        try:
            found.append(Migration(entry.name, hashlib.sha256(data).hexdigest(), data.decode("utf-8")))
        except UnicodeDecodeError as error:
            raise MigrationError(f"{entry.name}: not UTF-8 ({error})") from None
    found.sort(key=lambda migration: migration.filename)
    for before, after in zip(found, found[1:]):
        if before.filename[:4] == after.filename[:4]:
            raise MigrationError(f"{before.filename} and {after.filename} have the same number")
    return found


def plan(discovered: list[Migration], applied: Mapping[str, str]) -> Status:
    """Compare `discovered` files with `applied` (filename -> checksum from the table)."""
    names = {migration.filename for migration in discovered}
    return Status(
        applied=tuple(m.filename for m in discovered if applied.get(m.filename) == m.checksum),
        pending=tuple(m for m in discovered if m.filename not in applied),
        changed=tuple(m.filename for m in discovered if m.filename in applied and applied[m.filename] != m.checksum),
        missing=tuple(sorted(set(applied) - names)),
    )


def format_status(status: Status) -> list[str]:
    """The `migrate --status` lines, in filename order."""
    rows = [(name, f"applied  {name}  {_when(status.applied_at.get(name))}") for name in status.applied]
    rows += [(m.filename, f"pending  {m.filename}") for m in status.pending]
    rows += [(name, _changed_line(name)) for name in status.changed]
    rows += [(name, f"MISSING  {name} (applied, but there is no such file)") for name in status.missing]
    return [line for _, line in sorted(rows)] or ["no migrations"]


async def migration_status(db: Database, migrations: list[Migration]) -> Status:
    """Compare `migrations` with what the database has applied."""
    rows = await _applied_rows(db)
    status = plan(migrations, {name: checksum for name, checksum, _ in rows})
    return replace(status, applied_at={name: at for name, _, at in rows})


async def pending_migrations(db: Database, directory: Traversable | str | None = None) -> list[str]:
    """Names of the shipped migrations (or those in `directory`) the database has not applied."""
    migrations = discover(directory if directory is not None else migrations_dir())
    return [migration.filename for migration in (await migration_status(db, migrations)).pending]


async def apply_pending(db: Database, migrations: list[Migration], write: Callable[[str], None]) -> bool:
    """
    Apply every pending migration in order, writing `OK <file>` or `FAIL <file>: <error>`.

    Stops at the first failure (its transaction rolled back, so it leaves no row) and returns
    False; returns True when nothing failed. Files changed since they were applied are reported
    (`CHANGED ...`) but do not stop the run; `migrate --status` exits 1 on them.
    """
    await db.run_interaction(_create_table)
    status = await migration_status(db, migrations)
    for name in status.changed:
        write(_changed_line(name))
    if not status.pending:
        write("nothing to apply")
        return True
    for migration in status.pending:
        try:
            applied = await db.run_interaction(_apply, migration)
        except (DatabaseError, psycopg2.Error) as error:
            write(f"FAIL {migration.filename}: {describe(error)}")
            return False
        if applied:  # else a concurrent runner applied it first
            write(f"OK {migration.filename}")
    return True


async def migrate_command(
    reactor: Reactor,
    dsn: str,
    *,
    status_only: bool,
    write: Callable[[str], None],
    connect_timeout: float,
    query_timeout: float,
    directory: Traversable | str | None = None,
) -> int:
    """
    `smoltbot migrate [--status]`: apply pending migrations, or list them all.

    Returns the exit status: 0 on success; 1 when a migration failed, the database could not be
    reached (after `connect_timeout`), or (`--status`) an applied file has changed. Every
    problem is reported as one line through `write`, without the DSN's password.
    """
    try:
        migrations = discover(directory if directory is not None else migrations_dir())
        db = Database(
            dsn, reactor=reactor, pool_size=1, connect_timeout=connect_timeout, query_timeout=query_timeout
        )
    except (MigrationError, ValueError) as error:
        write(f"error: {error}")
        return 1
    db.startService()
    try:
        await wait_connected(db, reactor, connect_timeout)
        if status_only:
            status = await migration_status(db, migrations)
            for line in format_status(status):
                write(line)
            return 1 if status.changed else 0
        return 0 if await apply_pending(db, migrations, write) else 1
    except (DatabaseError, psycopg2.Error) as error:
        write(f"error: {describe(error)}")
        return 1
    finally:
        await db.stopService()


async def _applied_rows(db: Database) -> list[tuple[str, str, datetime]]:
    [(exists,)] = await db.run_query(schema_migrations.EXISTS, retry_idempotent=True)
    if not exists:
        return []
    return await db.run_query(schema_migrations.APPLIED, retry_idempotent=True)


async def _create_table(cursor: Cursor) -> None:
    await cursor.execute(*schema_migrations.LOCK)
    await cursor.execute(schema_migrations.CREATE)


async def _apply(cursor: Cursor, migration: Migration) -> bool:
    """Apply one migration unless a concurrent runner already has; True when this call did."""
    await cursor.execute(*schema_migrations.LOCK)
    await cursor.execute(schema_migrations.IS_APPLIED, (migration.filename,))
    if cursor.fetchone() is not None:
        return False
    await cursor.execute(migration.sql)
    await cursor.execute(schema_migrations.RECORD, (migration.filename, migration.checksum))
    return True


def _changed_line(name: str) -> str:
    return f"CHANGED  {name} (applied checksum differs from the file)"


def _when(at: datetime | None) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds") if at is not None else "?"
