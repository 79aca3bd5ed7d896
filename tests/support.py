"""
Shared test fixtures: a private PostgreSQL database and Redis key prefix per test run.

Tests talk to the real servers on this machine (DESIGN §2). Each trial process gets its
own database, created on first use and dropped at exit, so concurrent runs never collide.
"""

import atexit
import os
import shutil
import tempfile
import uuid

import psycopg2
from twisted.internet.defer import maybeDeferred

_ADMIN_DSN = os.environ.get("SMOLTBOT_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
REDIS_URL = os.environ.get("SMOLTBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = f"test-{RUN_ID}:kv:"

_created: list = []


def _admin(statement: str) -> None:
    connection = psycopg2.connect(_ADMIN_DSN)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def new_database() -> str:
    """
    Create an empty database for this run and return its DSN (URL form).

    Every call makes a fresh database, so a test may own one outright; all are dropped when the
    process exits.
    """
    name = f"smoltbot_test_{RUN_ID}_{len(_created)}"
    _admin(f'CREATE DATABASE "{name}"')
    _created.append(name)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def new_state_dir() -> str:
    """A fresh, empty state folder (the daemon's spool goes in it), removed when the process exits."""
    path = tempfile.mkdtemp(prefix=f"smoltbot-state-{RUN_ID}-")
    atexit.register(shutil.rmtree, path, True)
    return path


class InlineWorker:
    """A recorder `Worker` that runs each call at once on the calling thread (memory-reactor tests)."""

    def start(self) -> None:
        pass

    def run(self, fn, *args):
        return maybeDeferred(fn, *args)

    def stop(self) -> None:
        pass


@atexit.register
def _drop_databases() -> None:
    for name in _created:
        try:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg2.Error:
            pass
