#!/usr/bin/env bash
# Installs what a fresh machine with only the Rust toolchain lacks for
# building and testing acct. Idempotent: does nothing when all is present.
#
# - a C compiler (ring; later RocksDB's C++)
# - libclang (bindgen for RocksDB's bindings, used by the ingest path)
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# libclang proper (libclang.so / libclang-N.so), not libclang-cpp.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then
  need+=(libclang-dev clang)
fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
