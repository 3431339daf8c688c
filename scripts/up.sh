#!/usr/bin/env bash
# Build Beacon and start it with its own local nats-server (installed into
# tools/ when PATH has none new enough). Extra arguments go to `beacon up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NATS_SERVER="$(scripts/install-nats-server.sh)"
cargo build --release --locked -p beacon
export BEACON_NATS__SERVER_BINARY="${BEACON_NATS__SERVER_BINARY:-$NATS_SERVER}"
exec target/release/beacon up "$@"
