#!/usr/bin/env bash
# Installs what a fresh machine with only the Rust toolchain lacks for
# building and testing acct. Idempotent: does nothing when all is present.
#
# - a C compiler (ring; later RocksDB's C++)
# - libclang (bindgen for RocksDB's bindings, used by the ingest path)
# - Python 3 with pyarrow, DuckDB, polars and DataFusion in a venv
#   (ACCT_VENV, default /var/tmp/acct-venv): the export tests read the
#   Parquet files, in a folder and in a bucket, with readers independent of
#   acct's own
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# openssl: the suite checks that OpenSSL reads the key files `acct init` writes.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# libclang proper (libclang.so / libclang-N.so), not libclang-cpp.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then
  need+=(libclang-dev clang)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3)
# promtool, for the alerting rules' unit tests (tests/tests/alerts.rs).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ "${#need[@]}" -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv="${ACCT_VENV:-/var/tmp/acct-venv}"
if ! "$venv/bin/python" -c 'import pyarrow, duckdb, polars, datafusion' >/dev/null 2>&1; then
  echo "install-deps: installing pyarrow, duckdb, polars and datafusion into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'pyarrow>=15' 'duckdb>=1.0' 'polars>=1.0' 'datafusion>=40'
fi
