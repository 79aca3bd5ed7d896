#!/usr/bin/env bash
# Set up a virtualenv in .venv, apply the database migrations, and run the gateway in the foreground.
# DATABASE_URL defaults to the local PostgreSQL server (database "smoltbot", created if missing);
# without REDIS_URL the gateway uses its in-memory KV store. Every other variable: docs/CONFIGURATION.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet .
if [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/smoltbot"
  if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'smoltbot'" postgres | grep -q 1; then
    createdb -h 127.0.0.1 -U postgres smoltbot
  fi
fi
if [ -z "${ANTHROPIC_API_KEY:-}" ] && [ -z "${MNEMOM_ANALYZE_URL:-}" ] && [ -z "${AIP_ENABLED:-}" ]; then
  echo "ANTHROPIC_API_KEY is not set: running with integrity analysis off (AIP_ENABLED=false)" >&2
  export AIP_ENABLED=false
fi
export SMOLTBOT_STATE_DIR="${SMOLTBOT_STATE_DIR:-$PWD/state}"
.venv/bin/smoltbot migrate
exec .venv/bin/twistd --nodaemon --pidfile= smoltbot "$@"
