#!/usr/bin/env bash
# The release build every benchmark script uses. The binaries under test are
# built exactly as the README builds them (`-p acct -p loadgen`), so the
# benchmarks measure what operators run; then the bench package's own
# binaries and benchmarks. The workspace-hack crate (cargo-hakari) makes both
# selections resolve RocksDB's build the same way: its C++ is compiled once.
# Only the bench selection adds tokio's `test-util` (async-nats's retry helper
# asks for it), so it compiles tokio and the crates above it a second time,
# Rust only, into artifacts of their own.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p acct -p loadgen --bins
cargo build --release --locked -p bench --bins --benches
