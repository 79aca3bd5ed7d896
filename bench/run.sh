#!/usr/bin/env bash
# The proxy benchmark in one command: raises the open-files limit (1,000 held streams need
# ~3,000 descriptors), installs wrk if missing, and runs `python -m bench` from the project root
# with $PYTHON, else .venv/bin/python (made like scripts/test.sh does when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if [ -z "${PYTHON:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet '.[test]'
  fi
  PYTHON=.venv/bin/python
fi
exec "$PYTHON" -m bench "$@"
