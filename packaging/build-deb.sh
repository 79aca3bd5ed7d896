#!/usr/bin/env bash
# Build smoltbot_<version>_<arch>.deb with dpkg-buildpackage (dh-virtualenv), from the files of
# this checkout that git tracks or would track, in a scratch copy (dpkg-buildpackage writes its
# results next to the source tree). Installs the build dependencies when they are missing.
# Usage: packaging/build-deb.sh [OUTDIR]    (default: dist/deb). Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist/deb}")

packaging/apt-ensure.sh build-essential debhelper dh-virtualenv python3-venv fakeroot

scratch=$(mktemp -d "${TMPDIR:-/tmp}/smoltbot-deb.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$scratch/src"

# Dependencies come from PyPI only, pinned and hash-checked by packaging/constraints.txt: leave
# out this machine's pip settings (local wheel folders, extra indexes).
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT || true

(cd "$scratch/src" && dpkg-buildpackage -us -uc -b) >"$scratch/build.log" 2>&1 || {
  tail -n 60 "$scratch/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed" >&2
  exit 1
}
mkdir -p "$out"
cp "$scratch/build.log" "$out/build.log"
debs=("$scratch"/smoltbot_*.deb)
cp "${debs[@]}" "$scratch"/smoltbot_*.buildinfo "$scratch"/smoltbot_*.changes "$out/"
echo "$out/$(basename "${debs[0]}")"
