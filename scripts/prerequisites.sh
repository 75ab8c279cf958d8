#!/usr/bin/env bash
# Installs everything the tests need on Debian 12, idempotently and without
# questions: PostgreSQL, restic, the moto S3 server, Azurite, and the manifest
# validators. A second run only checks versions.
set -euo pipefail

MOTO_VERSION=5.2.5
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
AZURITE_VERSION=3.37.0

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "prerequisites: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# Debian packages.
missing=()
for pkg in postgresql postgresql-client restic iproute2 nodejs npm; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node may come from elsewhere than Debian (a newer build already on PATH): keep it.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "prerequisites: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package may start a system cluster on 5432; tests run their own servers.
  if command -v pg_ctlcluster >/dev/null; then
    for conf in /etc/postgresql/*/main; do
      [ -d "$conf" ] || continue
      ver=$(basename "$(dirname "$conf")")
      $SUDO pg_ctlcluster "$ver" main stop 2>/dev/null || true
    done
  fi
fi

# Python packages, pinned.
pip_install() {
  local name=$1 version=$2
  local have
  have=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  if [ "$have" != "$version" ]; then
    echo "prerequisites: installing $name==$version"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$3==$version"
  fi
}
pip_install moto "$MOTO_VERSION" "moto[server]"
pip_install kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes-validate
pip_install check-jsonschema "$CHECK_JSONSCHEMA_VERSION" check-jsonschema
# pyenv installs console scripts behind shims that need a rehash.
command -v pyenv >/dev/null && pyenv rehash 2>/dev/null || true

# Azurite, pinned, from npm.
npm_root=$(npm root -g)
have=$(node -p "require('$npm_root/azurite/package.json').version" 2>/dev/null || true)
if [ "$have" != "$AZURITE_VERSION" ]; then
  echo "prerequisites: installing azurite@$AZURITE_VERSION"
  $SUDO npm install -g --silent --no-fund --no-audit "azurite@$AZURITE_VERSION" >/dev/null
fi

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
echo "prerequisites: postgres $("$pg_bin/pg_ctl" --version | awk '{print $3}')," \
  "restic $(restic version | awk '{print $2}')," \
  "moto $(python3 -m pip show moto | sed -n 's/^Version: //p')," \
  "kubernetes-validate $(python3 -m pip show kubernetes-validate | sed -n 's/^Version: //p')," \
  "check-jsonschema $(check-jsonschema --version | awk '{print $3}')," \
  "azurite $(node -p "require('$(npm root -g)/azurite/package.json').version")"
