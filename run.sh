#!/usr/bin/env bash
# Sets up and runs AuraLink: installs what the build needs (skipping what is there), builds
# release, fetches and converts the Whisper models (models/whisper/), installs the
# livekit-client bundle the demo page loads (web/vendor/), and starts `auralink serve --dev` on
# the embedded defaults (dev mode: generated keys, HTTP on 127.0.0.1 unless --bind says
# otherwise, data in ./data).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

apt_install build-essential pkg-config cmake
# Node may come from elsewhere (NodeSource ships npm inside nodejs); only fill what is missing.
command -v npm >/dev/null || apt_install npm
need_cargo
cargo build --release --bin auralink
AURALINK_BIN="$CARGO_TARGET_DIR/release/auralink" scripts/models.sh
scripts/web-vendor.sh
exec "$CARGO_TARGET_DIR/release/auralink" serve --dev "$@"
