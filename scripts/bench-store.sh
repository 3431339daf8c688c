#!/usr/bin/env bash
# `beacon bench store` with DuckDB as the reference engine: installs the pinned
# PyPI `duckdb` into a project-local virtual environment (.venv-bench/) and runs
# the benchmark (release build) with it. Arguments go to `beacon bench store`,
# e.g. `scripts/bench-store.sh --days 30 --events-per-day 100000`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/beacon/target}"
if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench
fi
.venv-bench/bin/python -m pip install --quiet --disable-pip-version-check duckdb==2.0.0 pytz==2025.2
cargo build --locked --release -p beacon
"$CARGO_TARGET_DIR/release/beacon" bench store --duckdb-python .venv-bench/bin/python "$@"
