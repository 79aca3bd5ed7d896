#!/usr/bin/env bash
# Set up a virtualenv in .venv with smoltbot and its test dependencies, then run the trial suite.
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379.
# Usage: scripts/test.sh [trial arguments, e.g. tests.test_config]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet '.[test]'
.venv/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; from twisted import plugins; list(getPlugins(IPlugin, plugins))'
if [ "$#" -eq 0 ]; then set -- tests; fi
exec .venv/bin/python -m twisted.trial --temp-directory "${TMPDIR:-/tmp}/smoltbot-trial-$$" "$@"
