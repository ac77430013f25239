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
# A smoke run of the benchmark harness (seconds, tiny sizes, debug builds):
# acct, the ceiling, PostgreSQL and JetStream, so that it cannot rot. Its
# figures mean nothing; the real run is `bash bench/scripts/harness.sh`.
smoke_out="$(mktemp)"
# Where cargo put the binaries (CARGO_TARGET_DIR, a config's target-dir, or target/).
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
SMOKE=1 BIN="$target_dir/debug" OUT="$smoke_out" bash bench/scripts/harness.sh 1
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); assert len(r['systems']) >= 12 and len(r['targets']) == 11" "$smoke_out"
rm -f "$smoke_out"
