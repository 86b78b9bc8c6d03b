#!/usr/bin/env bash
# Sets up and runs AuraLink: installs what the build needs (skipping what is there), builds
# release, and starts `auralink serve` on the embedded defaults (dev mode, data in ./data).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

apt_install build-essential pkg-config
need_cargo
cargo build --release --bin auralink
exec "$CARGO_TARGET_DIR/release/auralink" serve "$@"
