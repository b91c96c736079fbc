#!/usr/bin/env bash
# Make docs/daily-report-sample.html and .png: the daily report page of a sample shop
# (the report benchmark's data, 20,000 orders in a scratch database on the local
# PostgreSQL, dropped afterwards) and a screenshot of it in headless Chromium.
#
#   make install && docs/report-preview.sh
#
# Installs nothing from the network but Debian's chromium package (apt), if missing.
# SHOP_BENCH_SERVER_URL names another PostgreSQL server (a user that may create databases).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

.venv/bin/python -m bench.reports --orders 20000 --repeat 1 \
    --html docs/daily-report-sample.html >/dev/null

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --window-size=720,"${HEIGHT:-3400}" \
    --screenshot="$PWD/docs/daily-report-sample.png" \
    "file://$PWD/docs/daily-report-sample.html" 2>/dev/null
echo "wrote docs/daily-report-sample.html and docs/daily-report-sample.png"
