#!/usr/bin/env bash
# Installs test prerequisites (skipping what is there) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

apt_install build-essential pkg-config chromium chromium-driver nodejs npm
need_cargo
# Browser tests drive Debian's chromium with npm packages pinned by their lock files.
for dir in tests/browser tests/livekit; do
  [ -f "$dir/package.json" ] || continue
  (cd "$dir" && { [ -d node_modules ] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund; })
done
cargo test --all-targets -- --test-threads=2
