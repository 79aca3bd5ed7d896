#!/usr/bin/env bash
# Packaging checks for CI: build the .deb, run lintian on it (fails on errors), and run
# `systemd-analyze verify` (and an offline `systemd-analyze security` report) on the units
# as installed by the package. Installs its own apt packages. About 1.5 minutes once they
# are installed (the build fetches the pinned wheels from PyPI).
# Usage: packaging/check.sh [path/to/smoltbot_*.deb]   (without one, packaging/build-deb.sh builds it)
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
packaging/apt-ensure.sh lintian systemd man-db

if [ "$#" -ge 1 ]; then
  deb=$(realpath "$1")
else
  echo "== build"
  deb=$(packaging/build-deb.sh | tail -n 1)
fi
echo "package: $deb"
t1=$(date +%s)

echo "== lintian"
lintian --fail-on error --tag-display-limit 0 "$deb"
echo "lintian: no errors"
t2=$(date +%s)

echo "== systemd-analyze verify"
# A root holding the system's units and the package's files, so that verify finds the
# ExecStart binary, the dependencies' units and the man page of Documentation=.
root=$(mktemp -d "${TMPDIR:-/tmp}/smoltbot-units.XXXXXX")
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
cp -an /usr/lib/systemd/system/. "$root/lib/systemd/system/"
units=(smoltbot.service smoltbot@gateway.service smoltbot@scheduler.service)
MANPATH="$root/usr/share/man:" systemd-analyze verify --root="$root" "${units[@]}"
echo "systemd-analyze verify: clean (${units[*]})"
systemd-analyze security --offline=yes --root="$root" smoltbot.service | tail -n 1
t3=$(date +%s)

echo "== timings: build $((t1 - t0))s, lintian $((t2 - t1))s, verify $((t3 - t2))s, total $((t3 - t0))s"
