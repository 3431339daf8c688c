#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against real
# nats-servers (the pinned one, plus an old one to check Beacon refuses it),
# including the SDK-compatibility tests that drive the official PostHog and
# Segment SDKs from a project-local virtual environment (.venv/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BEACON_TEST_NATS_SERVER="$(scripts/install-nats-server.sh)"
BEACON_TEST_OLD_NATS_SERVER="$(NATS_SERVER_VERSION=2.10.26 scripts/install-nats-server.sh --pinned)"
export BEACON_TEST_NATS_SERVER BEACON_TEST_OLD_NATS_SERVER
echo "nats-server for tests: $BEACON_TEST_NATS_SERVER ($("$BEACON_TEST_NATS_SERVER" --version))"

# The pinned SDK versions are in crates/beacon-ingest/tests/sdk/requirements.txt.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r crates/beacon-ingest/tests/sdk/requirements.txt
BEACON_TEST_PYTHON="$PWD/.venv/bin/python"
export BEACON_TEST_PYTHON

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace 2>&1 | tee "$log"
# One closing line for the whole run (cargo's own last line is the doc tests').
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "beacon: %d passed, %d failed\n", p, f }' "$log"
