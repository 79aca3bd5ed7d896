#!/usr/bin/env bash
# The benchmarks in one command: raises the open-files limit (1,000 held streams need ~3,000
# descriptors), installs wrk if missing, and runs from the project root, with $PYTHON, else
# .venv/bin/python (made like scripts/test.sh does when missing):
#   bench/run.sh                 the proxy benchmark, `python -m bench`
#   bench/run.sh outage [ARGS]   a PostgreSQL outage under steady load, `python -m bench.outage`
#   bench/run.sh recorder [ARGS] records/s into PostgreSQL, `python -m bench.recorder`
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
case "${1:-}" in
  outage|recorder) module="bench.$1"; shift ;;
  *) module=bench ;;
esac
exec "$PYTHON" -m "$module" "$@"
