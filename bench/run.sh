#!/usr/bin/env bash
# The proxy benchmark in one command: raises the open-files limit (1,000 held streams need
# ~3,000 descriptors), installs wrk if missing, and runs `python -m bench` from the project root.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
exec "${PYTHON:-$( [ -x /work/venv/bin/python ] && echo /work/venv/bin/python || echo python3 )}" -m bench "$@"
