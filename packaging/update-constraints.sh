#!/usr/bin/env bash
# Regenerate packaging/constraints.txt: every dependency of setup.py's install_requires (and
# theirs), at exact versions with all their PyPI hashes, resolved for Python 3.11 (Debian 12's
# python3 and the image's base). Run it after changing install_requires, then run the tests,
# packaging/check.sh and packaging/test-deb.sh with the new pins.
# Usage: packaging/update-constraints.sh [--upgrade]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-/usr/bin/python3.11}
tools=${XDG_CACHE_HOME:-$HOME/.cache}/smoltbot-pip-tools
if [ ! -x "$tools/bin/pip-compile" ]; then
  "$python" -m venv "$tools"
  PIP_CONFIG_FILE=/dev/null "$tools/bin/pip" install -q --disable-pip-version-check pip-tools==7.6.2
fi
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT || true
"$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --output-file packaging/constraints.txt "$@" setup.py
grep -E '^[a-z]' packaging/constraints.txt | sed 's/ \\$//'
