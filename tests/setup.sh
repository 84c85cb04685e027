#!/bin/sh
# Installs what the test suite needs on a Debian machine that has the Rust toolchain:
# bubblewrap, python3 (with venv), systemd-analyze, Node.js, Chromium with its
# WebDriver (chromium, chromium-driver) and PostgreSQL's server from Debian; the MCP
# peer servers pinned in tests/peers from the npm registry; the Python peers
# (mcp-subscribe, mcp-server-fetch), LiteLLM's proxy and the observability
# peers (Prometheus' parser, the OTLP protobuf definitions) from PyPI into
# virtualenvs under tests/peers. Safe to run again: each part is skipped when it is in place
# and its pins have not changed.
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=""
command -v bwrap >/dev/null 2>&1 || need="$need bubblewrap"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
# The dashboard's browser test: headless Chromium driven over WebDriver.
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
# The fleet tests: a throwaway PostgreSQL server (initdb and pg_ctl from
# Debian's server package, run in a temp dir; the package's own cluster is
# not used).
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need="$need postgresql"
# Debian splits venv's pip bootstrap out of python3.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then
  echo "tests/setup.sh: installing$need"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

if ! cmp -s tests/peers/package-lock.json tests/peers/node_modules/.agentd-lock 2>/dev/null; then
  echo "tests/setup.sh: installing MCP peer servers (tests/peers)"
  npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
  cp tests/peers/package-lock.json tests/peers/node_modules/.agentd-lock
fi

# A virtualenv per requirements file, rebuilt when its pins change.
venv() {
  dir=$1
  req=$2
  if ! cmp -s "$req" "$dir/.agentd-requirements" 2>/dev/null; then
    echo "tests/setup.sh: installing $req into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check --no-input -r "$req"
    cp "$req" "$dir/.agentd-requirements"
  fi
}
venv tests/peers/venv tests/peers/requirements-mcp.txt
venv tests/peers/litellm-venv tests/peers/requirements-litellm.txt
venv tests/peers/obs-venv tests/peers/requirements-obs.txt
