#!/usr/bin/env bash
# Installs what fenice's tests need on Debian 12: PostgreSQL (server and client),
# restic, iproute2, kubectl, the moto S3 server, Azurite, and the manifest validators.
#
# Idempotent and non-interactive: it checks each piece first and installs only
# what is missing or at another version, so a second run only checks (a few
# seconds). Works as root (CI) or as a user with sudo. Used by README.md, .ci/run
# and developers alike:
#
#   bash scripts/prerequisites.sh
set -euo pipefail

MOTO_VERSION=5.2.5
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
# The independent reader of docs/repository-format.md (tests/format_reader.py).
READER_PACKAGES=(blake3==1.0.11 PyNaCl==1.6.2 argon2-cffi==25.1.0 zstandard==0.25.0)
AZURITE_VERSION=3.37.0

export DEBIAN_FRONTEND=noninteractive
export PIP_NO_INPUT=1
# Keep npm quiet and away from the network for anything but the install itself.
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

say() { echo "prerequisites: $*" >&2; }
die() { say "$*"; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: run this script as root"
  SUDO=(sudo -n)
fi
as_root() { "${SUDO[@]}" "$@"; }

# --- Debian packages -----------------------------------------------------------

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# prometheus: its promtool checks and unit-tests the alerts (tests/monitoring.rs);
# the policy-rc.d below keeps its service from starting. chromium renders the
# lab's drill and failover reports headless (tests/lab.rs). openssl makes and reads
# certificates in the certificate runbook's test. libfaketime sets a process's
# clock back for real (tests/repo_cli.rs).
want=(postgresql postgresql-client restic iproute2 prometheus chromium openssl libfaketime)
# Node.js may come from elsewhere than Debian (a newer build on PATH): keep it.
# NB: Azurite 3.37 declares node >= 22 but runs on 20; Debian 12's own node is 18.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  want+=(nodejs npm)
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  want+=(python3-pip)
fi
# kubectl runs the runbooks' blocks (tests/runbooks.rs) and the in-memory API
# server's kubectl checks; Debian 12's (1.20) is enough; keep one from elsewhere.
if ! command -v kubectl >/dev/null; then
  want+=(kubernetes-client)
fi

missing=()
for pkg in "${want[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  # Keep the postgresql package from starting a system cluster on port 5432 (the
  # tests run their own servers on free ports): a policy-rc.d that answers 101
  # tells invoke-rc.d not to start services. Only ours is removed afterwards.
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    own_policy=true
    trap 'as_root rm -f "$policy"' EXIT
  fi
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
  if $own_policy; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # Belt and braces, where a service manager started it anyway.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
    if command -v pg_lsclusters >/dev/null; then
      pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
        [ "$status" = online ] && as_root pg_ctlcluster "$ver" "$name" stop || true
      done
    fi
  fi
fi

# --- Python packages, pinned ---------------------------------------------------

pip_args=(--quiet --disable-pip-version-check)
[ "$(id -u)" -eq 0 ] && pip_args+=(--root-user-action=ignore)
# Debian's own python3 refuses pip installs into its site-packages (PEP 668).
if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  pip_args+=(--break-system-packages)
fi

# Prints "name version" for each distribution, "name -" when it is absent.
py_versions() {
  python3 - "$@" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "-")
EOF
}

declare -A have_py
while read -r name version; do have_py[$name]=$version; done \
  < <(py_versions moto kubernetes-validate check-jsonschema flask flask-cors blake3 PyNaCl argon2-cffi zstandard)

pip_specs=()
# moto's server needs its [server] extra (flask, flask-cors), not only moto itself.
if [ "${have_py[moto]}" != "$MOTO_VERSION" ] || [ "${have_py[flask]}" = - ] || [ "${have_py[flask-cors]}" = - ]; then
  pip_specs+=("moto[server]==$MOTO_VERSION")
fi
[ "${have_py[kubernetes-validate]}" = "$KUBERNETES_VALIDATE_VERSION" ] \
  || pip_specs+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
[ "${have_py[check-jsonschema]}" = "$CHECK_JSONSCHEMA_VERSION" ] \
  || pip_specs+=("check-jsonschema==$CHECK_JSONSCHEMA_VERSION")
for spec in "${READER_PACKAGES[@]}"; do
  [ "${have_py[${spec%%==*}]}" = "${spec##*==}" ] || pip_specs+=("$spec")
done

if [ ${#pip_specs[@]} -gt 0 ]; then
  say "installing from PyPI: ${pip_specs[*]}"
  python3 -m pip install "${pip_args[@]}" "${pip_specs[@]}"
  # pyenv puts console scripts behind shims, made by a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash 2>/dev/null || true; fi
fi

# --- Azurite, pinned, from npm -------------------------------------------------

# NB: npm may warn on stderr about user config it does not know; only stdout counts.
npm_root=$(npm root -g 2>/dev/null)
azurite_version() {
  sed -n 's/^  "version": "\(.*\)",$/\1/p' "$npm_root/azurite/package.json" 2>/dev/null | head -n 1
}
if [ "$(azurite_version)" != "$AZURITE_VERSION" ]; then
  say "installing azurite@$AZURITE_VERSION from npm"
  npm_sudo=()
  [ -w "$npm_root" ] || npm_sudo=("${SUDO[@]}")
  "${npm_sudo[@]}" npm install -g --silent --no-fund --no-audit "azurite@$AZURITE_VERSION" >/dev/null 2>&1 \
    || die "npm install -g azurite@$AZURITE_VERSION failed; run it by hand to see why"
  [ "$(azurite_version)" = "$AZURITE_VERSION" ] \
    || die "azurite under $npm_root is $(azurite_version), not $AZURITE_VERSION"
fi
[ -f "$npm_root/azurite/dist/src/blob/main.js" ] \
  || die "azurite is installed but $npm_root/azurite/dist/src/blob/main.js is missing"

# --- Check and report ----------------------------------------------------------

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pg_bin/pg_ctl" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
for tool in moto_server kubernetes-validate check-jsonschema restic psql node; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH after installing it (PATH=$PATH)"
done

declare -A v
while read -r name version; do v[$name]=$version; done \
  < <(py_versions moto kubernetes-validate check-jsonschema)
echo "pg_ctl               $("$pg_bin/pg_ctl" --version | awk '{print $3}') ($pg_bin)"
echo "moto_server          ${v[moto]}"
echo "kubernetes-validate  $(kubernetes-validate --version)"
echo "check-jsonschema     ${v[check-jsonschema]}"
echo "azurite              $(azurite_version) (node $(node --version))"
echo "restic               $(restic version | awk '{print $2}')"
