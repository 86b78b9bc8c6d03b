#!/usr/bin/env bash
# Installs test prerequisites (skipping what is there) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

apt_install build-essential pkg-config cmake chromium chromium-driver python3 python3-venv espeak-ng sox
# GStreamer's webrtcbin, driven from Debian's python3 through PyGObject: an RSA-certificate WHIP publisher.
apt_install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 \
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice
# Node may come from elsewhere (NodeSource ships npm inside nodejs); only fill what is missing.
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
need_cargo
# Browser tests drive Debian's chromium with npm packages pinned by their lock files.
for dir in tests/browser tests/livekit; do
  [ -f "$dir/package.json" ] || continue
  (cd "$dir" && { [ -d node_modules ] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund; })
done
# schemathesis (PyPI, pinned) fuzzes the control API from its OpenAPI document.
venv=tests/schemathesis/.venv
want=$(sed -n 's/^schemathesis==//p' tests/schemathesis/requirements.txt)
if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$want"; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r tests/schemathesis/requirements.txt
fi
# LiveKit's Python SDK (PyPI, pinned): the Rust-core SDKs' test client.
venv=tests/livekit_py/.venv
want=$(sed -n 's/^livekit==//p' tests/livekit_py/requirements.txt)
if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "livekit==$want"; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r tests/livekit_py/requirements.txt
fi
# The room page at / loads livekit-client from web/vendor/; the browser test opens it.
scripts/web-vendor.sh
# The speech tests need the Whisper models; the debug build converts them.
cargo test --all-targets --no-run
AURALINK_BIN="$CARGO_TARGET_DIR/debug/auralink" scripts/models.sh
cargo test --all-targets -- --test-threads=2
# The vendored DTLS library's own unit tests (vendor/dimpl/PATCHES.md).
cargo test -p dimpl --lib
