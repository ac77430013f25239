#!/usr/bin/env bash
# The whole test suite. Works on a fresh machine that has only the Rust
# toolchain: installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The Python with pyarrow and DuckDB that install-deps.sh prepared.
export ACCT_PYTHON="${ACCT_PYTHON:-${ACCT_VENV:-/var/tmp/acct-venv}/bin/python}"
# Integration tests run the real binaries: build them first (cargo does not
# build another package's binaries for a test crate).
cargo build --workspace --bins --locked
cargo test --workspace --locked
