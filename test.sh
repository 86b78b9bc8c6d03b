#!/usr/bin/env bash
# Installs test prerequisites (skipping what is there) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

apt_install build-essential pkg-config chromium chromium-driver nodejs npm
need_cargo
if [ -f tests/browser/package.json ]; then
  (cd tests/browser && { [ -d node_modules ] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund; })
fi
cargo test --all-targets -- --test-threads=2
