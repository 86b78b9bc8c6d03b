#!/usr/bin/env bash
# Sets up the AIC demo on a running dev server (./run.sh): an org whose room "aic-demo" runs
# every audio track through AIC with the loopback on, and a join link for each of two people.
# Open each link in its own tab and press Join; each speaker's tile gets an "aic:" twin, and
# "Listen" on it plays that speaker after the codec instead of the original.
# Usage: scripts/aic-demo.sh [CONSERVATIVE|ADAPTIVE|AGGRESSIVE]   (default CONSERVATIVE)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${AURALINK_URL:-http://localhost:7880}
mode=${1:-CONSERVATIVE}
admin=$(cat data/dev-admin-key)
keyfile=data/aic-demo-key

json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
call() { curl -sSf -X "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' "$base$3" ${4:+--data "$4"}; }

if [ ! -s "$keyfile" ]; then
  key=$(call POST "$admin" /v1/orgs '{"name": "aic-demo", "owner_email": "demo@aic-demo.test"}' | json '["api_key"]["key"]')
  echo "$key" >"$keyfile"
fi
key=$(cat "$keyfile")
# 409 when it is there from an earlier run.
call POST "$key" /v1/rooms '{"name": "aic-demo"}' >/dev/null 2>&1 || true
# The quality floor is lowered so the codec is heard even where the guard would fall back.
call PUT "$key" /v1/rooms/aic-demo/aic "{\"enabled\": true, \"loopback\": true, \"mode\": \"$mode\", \"min_quality\": 1.0}" >/dev/null
for who in alice bob; do
  token=$(call POST "$key" /v1/tokens "{\"room\": \"aic-demo\", \"identity\": \"$who\"}" | json '["token"]')
  echo "$who: $base/?token=$token"
done
