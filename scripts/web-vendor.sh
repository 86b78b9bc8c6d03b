#!/usr/bin/env bash
# Installs the livekit-client UMD bundle that the room page at / loads from
# /vendor/livekit-client.umd.js: npm installs the pinned version into a cache dir (once), and
# the bundle is copied to web/vendor/. Idempotent: does nothing when both are already in place.
# The page needs no build step; this file is the only third-party code it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Same version the SDK compatibility test pins (tests/livekit/package.json).
VERSION=2.23.0
CACHE="${AURALINK_NPM_CACHE:-$HOME/.cache/auralink-npm}/livekit-client-$VERSION"
SRC="$CACHE/node_modules/livekit-client/dist/livekit-client.umd.js"
DEST=web/vendor/livekit-client.umd.js

if [ -f "$SRC" ]; then
  echo "web-vendor: livekit-client@$VERSION already in $CACHE"
else
  command -v npm >/dev/null || { echo "web-vendor: npm not found (./run.sh and ./test.sh install it)" >&2; exit 1; }
  echo "web-vendor: installing livekit-client@$VERSION into $CACHE"
  mkdir -p "$CACHE"
  # --prefix keeps npm away from any package.json above the cache dir; --no-save/--no-package-lock
  # keep the cache dir free of manifests, so "installed" means just the file checked above.
  npm install --prefix "$CACHE" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "livekit-client@$VERSION"
  [ -f "$SRC" ] || { echo "web-vendor: npm finished but $SRC is missing" >&2; exit 1; }
fi

if [ -f "$DEST" ] && cmp -s "$SRC" "$DEST"; then
  echo "web-vendor: $DEST is up to date"
else
  mkdir -p web/vendor
  # Copy to a temporary name first so a running server never serves a half-written file.
  cp "$SRC" "$DEST.tmp" && mv "$DEST.tmp" "$DEST"
  echo "web-vendor: copied livekit-client.umd.js ($VERSION) to $DEST"
fi
