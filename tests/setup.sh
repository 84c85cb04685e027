#!/bin/sh
# Installs what the test suite needs on a Debian machine that has the Rust toolchain:
# bubblewrap, python3, systemd-analyze and Node.js from Debian, and the MCP peer
# servers pinned in tests/peers from the npm registry. Safe to run again.
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
if [ -n "$need" ]; then
  echo "tests/setup.sh: installing$need"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

if [ ! -f tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
  echo "tests/setup.sh: installing MCP peer servers (tests/peers)"
  npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
fi
