#!/usr/bin/env bash
# Install the smoltbot .deb into a fresh Debian 12 root and check it there, as on a clean machine:
# the smoltbot user and group; files, owners and modes; `twistd --help` lists smoltbot; the
# shipped (unconfigured) environment makes `smoltbot check-config` and the daemon name the
# missing variables; with the environment file filled in (pointing at this machine's PostgreSQL
# on 127.0.0.1:5432, user postgres, trust authentication, a throwaway database), `smoltbot
# migrate` and `check-config` succeed and the daemon, started with the unit's ExecStart line as
# user smoltbot (no systemd: packaging/unit_run.py plays its part), reports READY=1, answers
# /health/live and drains on SIGTERM with exit status 0; `apt remove` keeps the configuration;
# `apt purge` leaves nothing behind.
#
# The root is made with debootstrap (minbase) from Debian's mirror once and cached as a tarball
# in $SMOLTBOT_TEST_CACHE (default /var/cache/smoltbot-packaging); every run unpacks a fresh copy.
# A slow check (a few minutes): run it before a release, not in .ci/run. Needs root.
#
# Usage: packaging/test-deb.sh [path/to/smoltbot_*.deb]   (without one, packaging/build-deb.sh builds it)
# Exit status: 0 all passed, 1 something failed, 2 nothing failed but some checks could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SMOLTBOT_TEST_CACHE:-/var/cache/smoltbot-packaging}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
port=${SMOLTBOT_TEST_PORT:-18787}
t_start=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then echo "test-deb.sh needs root (debootstrap, chroot)" >&2; exit 1; fi

packaging/apt-ensure.sh debootstrap postgresql-client python3

if [ "$#" -ge 1 ]; then
  deb=$(realpath "$1")
else
  echo "== building the package"
  deb=$(packaging/build-deb.sh | tail -n 1)
fi
deb_name=$(basename "$deb")
echo "package: $deb"

# ---- results ----------------------------------------------------------------------------------
summary=()
failures=0
skipped=0
pass() { summary+=("PASS  $1"); echo "PASS  $1"; }
fail() { summary+=("FAIL  $1"); echo "FAIL  $1"; failures=$((failures + 1)); }
skip() { summary+=("SKIP  $1"); echo "SKIP  $1"; skipped=$((skipped + 1)); }
check() { # check "description" command...
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# ---- a fresh root -------------------------------------------------------------------------------
base="$cache/bookworm-minbase.tar"
mkdir -p "$cache"
if [ ! -s "$base" ]; then
  echo "== debootstrap bookworm (minbase) from $mirror, cached in $base"
  rm -rf "$cache/bookworm-minbase.tmp"
  debootstrap --variant=minbase bookworm "$cache/bookworm-minbase.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
  tar -C "$cache/bookworm-minbase.tmp" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$cache/bookworm-minbase.tmp"
fi

root=$(mktemp -d "$cache/root.XXXXXX")
dbname="smoltbot_debtest_$$"
db_created=no
mounted=()
cleanup() {
  set +e
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}"
  done
  if findmnt -R -n -o TARGET "$root" >/dev/null 2>&1; then
    echo "cleanup: $root still has mounts, leaving it in place" >&2
  elif [ -z "${KEEP_ROOT:-}" ]; then
    rm -rf --one-file-system "$root"
  else
    echo "root kept in $root"
  fi
  if [ "$db_created" = yes ]; then dropdb -h 127.0.0.1 -U postgres --if-exists "$dbname"; fi
}
trap cleanup EXIT

tar -C "$root" -xf "$base"
for fs in proc sys dev dev/pts; do
  case $fs in
    proc) mount -t proc proc "$root/proc" ;;
    sys) mount -t sysfs sysfs "$root/sys" ;;
    *) mount --bind "/$fs" "$root/$fs" ;;
  esac
  mounted+=("$root/$fs")
done
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
# No service starts in the chroot (there is no systemd in it either).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/tmp/$deb_name"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin LANG=C.UTF-8 "$@"; }
as_smoltbot() { # as_smoltbot ENVFILE command... : like the unit, with the environment file loaded
  local envfile=$1; shift
  chroot --userspec=smoltbot:smoltbot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin \
    LANG=C.UTF-8 HOME=/var/lib/smoltbot PYTHONDONTWRITEBYTECODE=1 \
    /bin/sh -c 'set -a; . "$0"; set +a; exec "$@"' "$envfile" "$@"
}

# ---- install ------------------------------------------------------------------------------------
echo "== apt install ./$deb_name in a fresh Debian $(cat "$root/etc/debian_version") root"
t_install=$(date +%s)
if in_root apt-get update -qq >"$root/tmp/apt.log" 2>&1 \
   && in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "/tmp/$deb_name" >>"$root/tmp/apt.log" 2>&1; then
  pass "apt install ./$deb_name ($(( $(date +%s) - t_install ))s, with its dependencies from the mirror)"
else
  tail -n 30 "$root/tmp/apt.log"
  fail "apt install ./$deb_name"
  printf '%s\n' "${summary[@]}"
  exit 1
fi

# ---- user, files, owners, modes -----------------------------------------------------------------
echo "== user and files"
pw=$(in_root getent passwd smoltbot || true)
IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
check "user smoltbot exists (system uid ${uid:-?} < 1000, home ${home:-?}, shell ${shell:-?})" \
  test -n "$pw" -a "${uid:-1000}" -lt 1000 -a "${home:-}" = /var/lib/smoltbot -a "${shell:-}" = /usr/sbin/nologin
gr=$(in_root getent group smoltbot || true)
check "group smoltbot exists and is the user's primary group" test -n "$gr" -a "$(cut -d: -f3 <<<"$gr")" = "${gid:-x}"

expect_stat() { # expect_stat PATH "MODE OWNER:GROUP TYPE"
  local got
  got=$(in_root stat -c '%a %U:%G %F' "$1" 2>/dev/null || echo missing)
  check "$1: $got" test "$got" = "$2"
}
expect_stat /etc/smoltbot/smoltbot.env "640 root:smoltbot regular file"
expect_stat /etc/smoltbot/smoltbot-gateway.env "640 root:smoltbot regular file"
expect_stat /etc/smoltbot/smoltbot-scheduler.env "640 root:smoltbot regular file"
expect_stat /lib/systemd/system/smoltbot.service "644 root:root regular file"
expect_stat /lib/systemd/system/smoltbot@.service "644 root:root regular file"
expect_stat /opt/venvs/smoltbot/bin/twistd "755 root:root regular file"
expect_stat /opt/venvs/smoltbot/bin/smoltbot "755 root:root regular file"
expect_stat /var/lib/smoltbot "750 smoltbot:smoltbot directory"
check "/usr/bin/smoltbot -> $(in_root readlink /usr/bin/smoltbot)" \
  test "$(in_root readlink -f /usr/bin/smoltbot)" = /opt/venvs/smoltbot/bin/smoltbot
check "/opt/venvs/smoltbot/bin/python -> $(in_root readlink -f /opt/venvs/smoltbot/bin/python)" \
  test "$(in_root readlink -f /opt/venvs/smoltbot/bin/python)" = /usr/bin/python3.11
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' smoltbot | awk '{print $1}' | tr '\n' ' ')
check "conffiles: $conffiles" grep -q '/etc/smoltbot/smoltbot.env ' <<<"$conffiles "
cache_file=$(in_root sh -c 'ls /opt/venvs/smoltbot/lib/python3*/site-packages/twisted/plugins/dropin.cache' 2>/dev/null || true)
check "Twisted plugin cache built by postinst (${cache_file:-none})" test -n "$cache_file"
check "man page /usr/share/man/man1/smoltbot.1.gz" test -f "$root/usr/share/man/man1/smoltbot.1.gz"
documented=$(grep -oE '^\| `[A-Z][A-Z0-9_]+`( / `[A-Z][A-Z0-9_]+`)?' docs/CONFIGURATION.md | grep -oE '[A-Z][A-Z0-9_]+' | sort -u)
absent=$(for v in $documented; do grep -qE "^#?$v=" "$root/etc/smoltbot/smoltbot.env" || echo "$v"; done)
check "smoltbot.env lists all $(wc -w <<<"$documented") variables of docs/CONFIGURATION.md${absent:+ (missing: $absent)}" test -z "$absent"

# ---- the commands -------------------------------------------------------------------------------
echo "== commands"
mtime_before=$(stat -c %Y "$root$cache_file" 2>/dev/null || echo 0)
help=$(as_smoltbot /etc/smoltbot/smoltbot.env /opt/venvs/smoltbot/bin/twistd --help 2>&1 || true)
check "twistd --help (as smoltbot) lists smoltbot: $(grep -E '^ +smoltbot' <<<"$help" | tr -s ' ' | head -c 100)" grep -qE '^ +smoltbot ' <<<"$help"
check "plugin cache is current (twistd did not need to rewrite it)" test "$(stat -c %Y "$root$cache_file" 2>/dev/null || echo 1)" = "$mtime_before"
version=$(as_smoltbot /etc/smoltbot/smoltbot.env smoltbot --version 2>&1 || true)
check "smoltbot --version: $version" grep -q "^smoltbot $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')" <<<"$version"

# What the daemon modules need that main may not have yet (database, KV, migrations, checks).
modules=$(in_root /opt/venvs/smoltbot/bin/python -c '
import importlib.util
for m in ("smoltbot.store.pool", "smoltbot.store.kv", "smoltbot.store.migrate", "smoltbot.cli.check_config"):
    if importlib.util.find_spec(m) is None:
        print(m)' 2>&1 || true)
modules=$(tr '\n' ' ' <<<"$modules" | sed 's/ $//')
set +e
out=$(as_smoltbot /etc/smoltbot/smoltbot.env smoltbot check-config 2>&1); status=$?
set -e
if grep -q 'smoltbot.cli.check_config' <<<"$modules"; then
  skip "smoltbot check-config with the shipped environment names the missing variables (smoltbot.cli.check_config is not in this build)"
else
  names_both() { [ "$status" -ne 0 ] && grep -q DATABASE_URL <<<"$out" && grep -q ANTHROPIC_API_KEY <<<"$out"; }
  check "smoltbot check-config with the shipped environment: exit $status, names DATABASE_URL and ANTHROPIC_API_KEY" names_both
fi
sed 's/^/  | /' <<<"$out" | head -n 12

echo "== unconfigured start (the unit's ExecStart with the shipped environment file)"
if python3 packaging/unit_run.py --root "$root" --unit /lib/systemd/system/smoltbot.service --expect-config-error >"$root/tmp/unconfigured.log" 2>&1; then
  pass "unconfigured start: exit status 1 with one EnvValidationError naming DATABASE_URL and ANTHROPIC_API_KEY, no READY=1"
else
  fail "unconfigured start (see below)"
fi
sed 's/^/  | /' "$root/tmp/unconfigured.log"

echo "== MemoryDenyWriteExecute (packaging/mdwe_check.py with the package's virtualenv)"
cp packaging/mdwe_check.py "$root/tmp/mdwe_check.py"
set +e
out=$(chroot --userspec=smoltbot:smoltbot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/var/lib/smoltbot \
  timeout 60 /opt/venvs/smoltbot/bin/python -B /tmp/mdwe_check.py 2>&1); status=$?
set -e
sed 's/^/  | /' <<<"$out"
mdwe_unit=$(grep -h '^MemoryDenyWriteExecute=' "$root/lib/systemd/system/smoltbot.service" || echo "not set")
case $status in
  0) pass "MemoryDenyWriteExecute: the stack works under MDWE (unit: $mdwe_unit; it could be turned on)" ;;
  3) if [ "$mdwe_unit" = MemoryDenyWriteExecute=yes ]; then fail "MemoryDenyWriteExecute=yes in the unit breaks TLS"
     else pass "MemoryDenyWriteExecute stays off in the unit: TLS (pyOpenSSL cffi callbacks) needs W+X memory"; fi ;;
  *) skip "MemoryDenyWriteExecute: this kernel cannot tell (exit $status)" ;;
esac

# ---- configured: PostgreSQL, migrate, check-config, the daemon ----------------------------------
echo "== configured against PostgreSQL on 127.0.0.1:5432 (database $dbname)"
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  fail "PostgreSQL is not answering on 127.0.0.1:5432 (start it, e.g. as .ci/run does)"
elif ! createdb -h 127.0.0.1 -U postgres "$dbname"; then
  fail "createdb $dbname on 127.0.0.1:5432 as postgres"
else
  db_created=yes
  # Fill in the conffile as an operator would: keep every line, set the values.
  sed -i \
    -e "s|^DATABASE_URL=.*|DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$dbname|" \
    -e "s|^ANTHROPIC_API_KEY=.*|ANTHROPIC_API_KEY=|" \
    -e "s|^#AIP_ENABLED=.*|AIP_ENABLED=false|" \
    -e "s|^#HEARTBEAT_URL=.*|HEARTBEAT_URL=|" \
    -e "s|^#PORT=.*|PORT=$port|" \
    -e "s|^#HOST=.*|HOST=127.0.0.1|" \
    -e "s|^#DEPLOYMENT_ID=.*|DEPLOYMENT_ID=test-deb|" \
    "$root/etc/smoltbot/smoltbot.env"
  expect_stat /etc/smoltbot/smoltbot.env "640 root:smoltbot regular file"

  lacks() { grep -qw "$1" <<<"$modules"; }
  if lacks smoltbot.store.migrate; then
    skip "smoltbot migrate against PostgreSQL (smoltbot.store.migrate is not in this build)"
  else
    set +e
    out=$(as_smoltbot /etc/smoltbot/smoltbot.env smoltbot migrate 2>&1); status=$?
    set -e
    check "smoltbot migrate (as smoltbot): exit $status" test "$status" -eq 0
    sed 's/^/  | /' <<<"$out" | tail -n 8
  fi
  if lacks smoltbot.cli.check_config; then
    skip "smoltbot check-config with the filled-in environment (smoltbot.cli.check_config is not in this build)"
  else
    set +e
    out=$(as_smoltbot /etc/smoltbot/smoltbot.env smoltbot check-config 2>&1); status=$?
    set -e
    check "smoltbot check-config with the filled-in environment: exit $status" test "$status" -eq 0
    sed 's/^/  | /' <<<"$out" | head -n 20
  fi

  echo "== the daemon, started with the unit's ExecStart (no systemd)"
  if lacks smoltbot.store.pool || lacks smoltbot.store.kv; then
    skip "daemon with the unit's ExecStart answers /health/live (not in this build: $modules)"
  elif python3 packaging/unit_run.py --root "$root" --unit /lib/systemd/system/smoltbot.service \
       --get "http://127.0.0.1:$port/health/live" --get "http://127.0.0.1:$port/health/startup" \
       >"$root/tmp/daemon.log" 2>&1; then
    pass "daemon: READY=1, /health/live 200 {\"status\":\"ok\"}, SIGTERM -> STOPPING=1 and exit 0"
    sed 's/^/  | /' "$root/tmp/daemon.log"
  else
    fail "daemon with the unit's ExecStart (see below)"
    sed 's/^/  | /' "$root/tmp/daemon.log"
  fi
fi

# ---- remove, purge ------------------------------------------------------------------------------
echo "== apt remove, apt purge"
# Let the maintainer scripts believe systemd runs, with a systemctl that records what it is
# asked and reports two running units, and no policy-rc.d: remove must stop both.
mkdir -p "$root/run/systemd/system"
cat >"$root/usr/bin/systemctl" <<'STUB'
#!/bin/sh
echo "systemctl $*" >>/tmp/systemctl.log
case "$*" in
  *list-units*) printf '%s\n' 'smoltbot.service loaded active running smoltbot' 'smoltbot@scheduler.service loaded active running smoltbot scheduler' ;;
esac
exit 0
STUB
chmod 0755 "$root/usr/bin/systemctl"
mv "$root/usr/sbin/policy-rc.d" "$root/usr/sbin/policy-rc.d.off"
if in_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q smoltbot >"$root/tmp/remove.log" 2>&1; then
  pass "apt remove smoltbot"
else
  tail -n 20 "$root/tmp/remove.log"; fail "apt remove smoltbot"
fi
stopped() {
  grep -qE ' stop .*smoltbot\.service' "$root/tmp/systemctl.log" && grep -qE ' stop .*smoltbot@scheduler\.service' "$root/tmp/systemctl.log"
}
check "apt remove stops the running units ($(grep -E ' stop ' "$root/tmp/systemctl.log" 2>/dev/null | tr '\n' ' ' || echo 'no stop'))" stopped
check "after remove: /opt/venvs/smoltbot and /usr/bin/smoltbot are gone" test ! -e "$root/opt/venvs/smoltbot" -a ! -L "$root/usr/bin/smoltbot"
kept() { test -f "$root/etc/smoltbot/smoltbot.env" && in_root getent passwd smoltbot >/dev/null; }
check "after remove: the edited /etc/smoltbot/smoltbot.env and user smoltbot stay" kept
if grep -q "directory .* not empty" "$root/tmp/remove.log"; then
  fail "apt remove: dpkg left non-empty folders: $(grep 'not empty' "$root/tmp/remove.log" | head -n 3)"
fi
if in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q smoltbot >"$root/tmp/purge.log" 2>&1; then
  pass "apt purge smoltbot"
else
  tail -n 20 "$root/tmp/purge.log"; fail "apt purge smoltbot"
fi
rm -f "$root/usr/bin/systemctl" "$root/tmp/systemctl.log"
rmdir "$root/run/systemd/system" "$root/run/systemd"
mv "$root/usr/sbin/policy-rc.d.off" "$root/usr/sbin/policy-rc.d"
for path in /etc/smoltbot /opt/venvs/smoltbot /opt/venvs /var/lib/smoltbot /usr/share/doc/smoltbot; do
  check "after purge: no $path" test ! -e "$root$path"
done
check "after purge: no user smoltbot" sh -c "! chroot '$root' getent passwd smoltbot >/dev/null"
check "after purge: no group smoltbot" sh -c "! chroot '$root' getent group smoltbot >/dev/null"
check "after purge: dpkg knows no smoltbot" sh -c "! chroot '$root' dpkg-query -W -f='\${Status}' smoltbot >/dev/null 2>&1"
left=$(cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./tmp \) -prune -o -name '*smoltbot*' -print | head -n 10)
check "after purge: no file or folder named *smoltbot* left${left:+ ($(tr '\n' ' ' <<<"$left"))}" test -z "$left"

# ---- summary ------------------------------------------------------------------------------------
echo
echo "== test-deb summary: $deb_name on Debian $(cat "$root/etc/debian_version") (debootstrap minbase), $(( $(date +%s) - t_start ))s"
printf '%s\n' "${summary[@]}"
echo "$(grep -c '^PASS' < <(printf '%s\n' "${summary[@]}")) passed, $failures failed, $skipped skipped"
if [ "$failures" -gt 0 ]; then exit 1; fi
if [ "$skipped" -gt 0 ]; then exit 2; fi
