#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against real
# nats-servers (the pinned one, plus an old one to check Beacon refuses it),
# including the SDK-compatibility tests that drive the official PostHog and
# Segment SDKs from a project-local virtual environment (.venv/), and the
# dashboard's tests in headless Chromium (Debian's package, driven by
# playwright-core from tests/browser/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Dependencies compile once per machine: the build cache lives outside the
# clone (a fresh clone still builds everything it lacks into it).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/beacon/target}"
# Cargo names a workspace crate's artifacts by its path relative to the
# workspace, so checkouts in other folders share them, and it may judge them
# fresh by the other checkout's sources. Only dependencies are worth sharing:
# this checkout's own crates are always built from its own sources.
members=()
for crate in crates/*/Cargo.toml; do
    members+=(-p "$(basename "$(dirname "$crate")")")
done
cargo clean --quiet "${members[@]}"

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

# The browser tests need Chromium (Debian's, never a downloaded build) and
# Node.js with the playwright-core pinned in tests/browser/package-lock.json.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ! -x /usr/bin/chromium ] || ! command -v npm >/dev/null 2>&1; then
    echo "installing Debian's chromium (and Node.js if missing) for the browser tests" >&2
    as_root apt-get update -qq
    packages=(chromium)
    command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
# The GeoIP tests read the free country database the set-up installs.
BEACON_TEST_GEOIP_DB="$(scripts/install-geoip.sh)"
export BEACON_TEST_GEOIP_DB

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=0
cargo test --locked --workspace 2>&1 | tee "$log" || failed=1
# The dashboard against a real `beacon up` (the binary cargo test built).
cargo build --locked -p beacon
BEACON_BIN="$CARGO_TARGET_DIR/debug/beacon"
export BEACON_BIN
(cd tests/browser && node --test --test-reporter=spec) 2>&1 | tee -a "$log" || failed=1
# One closing line for the whole run: cargo's "test result:" lines and node's
# "ℹ pass N" / "ℹ fail N" summary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^ℹ pass [0-9]+$/ { p += $3 }
     /^ℹ fail [0-9]+$/ { f += $3 }
     END { printf "beacon: %d passed, %d failed\n", p, f }' "$log"
exit "$failed"
