#!/usr/bin/env bash
# The whole test suite. Works on a fresh machine that has only the Rust
# toolchain: installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# An S3-protocol server for the tests of the archive on a bucket
# (tests/tests/s3.rs): s3s-fs from crates.io, a real S3 implementation on a
# folder that honours conditional creates (If-None-Match: * answered 412).
# About 2 minutes to build on 2 cores, once; it goes to cargo's bin folder.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$cargo_bin/s3s-fs" ]; then
  echo "test.sh: installing s3s-fs 0.14.1 (cargo install)" >&2
  cargo install --quiet s3s-fs --version 0.14.1 --features binary --locked
fi
# The Python with pyarrow and DuckDB that install-deps.sh prepared.
export ACCT_PYTHON="${ACCT_PYTHON:-${ACCT_VENV:-/var/tmp/acct-venv}/bin/python}"
# Integration tests run the real binaries: build them first (cargo does not
# build another package's binaries for a test crate). With the tests too:
# `--bins` alone resolves the host dependencies' features without the
# dev-dependencies, a different set from `cargo test`'s, and cargo then
# builds bindgen and RocksDB's C++ a second time (~20 minutes on 2 cores on a
# cold machine); with `--tests` both commands share one build.
cargo build --workspace --bins --tests --locked
cargo test --workspace --locked
# A smoke run of the benchmark harness (seconds, tiny sizes, debug builds):
# acct, the ceiling, PostgreSQL and JetStream, so that it cannot rot. Its
# figures mean nothing; the real run is `bash bench/scripts/harness.sh`.
smoke_dir="$(mktemp -d)"
# Where cargo put the binaries (CARGO_TARGET_DIR, a config's target-dir, or target/).
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
# Two runs and their median (RUNS=2), so that the median's path is run too.
smoke_out="$smoke_dir/harness.json"
SMOKE=1 RUNS=2 BIN="$target_dir/debug" OUT="$smoke_out" bash bench/scripts/harness.sh 1
python3 - "$smoke_out" <<'PY'
import json, sys
median = json.load(open(sys.argv[1]))
assert len(median["runs"]) == 2 and len(median["targets"]) == 18 and len(median["systems"]) >= 12, median
for path in median["runs"]:
    run = json.load(open(path))
    assert len(run["systems"]) >= 12 and len(run["targets"]) == 18 and run["connections_ratio"]["value"] > 0, path
    # Issue 30's phases: the ramp, the echo floor and acct at 50%/90%, the
    # overload phases, and the storm with its audit.
    assert len(run["phases"]) >= 11 and run["storm"]["lost"] == 0 and run["storm"]["doubled"] == 0, run["storm"]
    # The floor under the open loop (udp_floor and the ceiling).
    assert run["floor"]["open_loop_floor_us_per_msg"] > 0 and run["floor"]["cores"] >= 1, run["floor"]
    for row in run["systems"]:
        if row["system"].startswith("acct"):
            # The AM's own wait, scraped from its metrics at the end of the run.
            assert isinstance(row["am_ingest_wait_ms"]["p99"], float), row
assert median["floor"]["open_loop_floor_us_per_msg"] > 0, median["floor"]
for t in median["targets"]:
    assert len(t["values"]) == 2 and min(t["values"]) <= t["value"] <= max(t["values"]), t
PY
rm -rf "$smoke_dir"
