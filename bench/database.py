"""
A private PostgreSQL database for one benchmark run: created through SMOLTBOT_BENCH_ADMIN_DSN
(default: the local server as `postgres`), migrated with `smoltbot migrate` as an operator would,
and dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg2

from bench.processes import ROOT

ADMIN_DSN = os.environ.get("SMOLTBOT_BENCH_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def _admin(statement: str) -> None:
    connection = psycopg2.connect(ADMIN_DSN)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@contextmanager
def private_database(purpose: str) -> Iterator[str]:
    """Create and migrate `smoltbot_bench_<purpose>_<pid>`; yield its URL; drop it on the way out."""
    name = f"smoltbot_bench_{purpose}_{os.getpid()}"
    params = psycopg2.extensions.parse_dsn(ADMIN_DSN)
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    url = f"postgresql://{user}{password}@{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{name}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": url, "AIP_ENABLED": "false"}
        migrate = subprocess.run([sys.executable, "-m", "smoltbot.cli", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if migrate.returncode != 0:
            raise SystemExit(f"smoltbot migrate failed:\n{migrate.stdout}{migrate.stderr}")
        yield url
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own short connection; its rows."""
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()
