#!/usr/bin/env bash
# The AM's memory with many provider connections: start `acct serve` (release)
# on a fresh data directory, hold N connections open (each with one stream
# that sent one message and got its ack), and report the AM's peak RSS.
#
#   bash bench/scripts/connections.sh 10000
set -euo pipefail
cd "$(dirname "$0")/../.."
connections="${1:-10000}"
target="${CARGO_TARGET_DIR:-target}"
bash bench/scripts/build.sh >/dev/null
data="$(mktemp -d)"
# One provider may hold at most 64 connections (connections_per_provider_max):
# spread them over as many identities as that needs.
providers=$(( (connections + 63) / 64 ))
"$target/release/acct" init "$data/pki" --providers "$providers" --users 0 >/dev/null
trap 'kill "$am_pid" 2>/dev/null || true; rm -rf "$data"' EXIT
"$target/release/acct" serve --data "$data" --config "$data/pki/acct.toml" --listen 127.0.0.1:0 >"$data/stdout" 2>"$data/stderr" &
am_pid=$!
for _ in $(seq 1 600); do
  grep -q "listening on" "$data/stdout" 2>/dev/null && break
  sleep 0.1
done
address="$(sed -n 's/^acct serve: listening on //p' "$data/stdout")"
[ -n "$address" ] || { echo "acct serve did not start"; cat "$data/stderr"; exit 1; }
idle_kib="$(awk '/VmRSS/ {print $2}' /proc/$am_pid/status)"
"$target/release/hold_connections" --am "$address" --pki "$data/pki" --connections "$connections" --providers "$providers" --hold-seconds 5 &
holder=$!
peak_kib=0
while kill -0 "$holder" 2>/dev/null; do
  rss="$(awk '/VmRSS/ {print $2}' /proc/$am_pid/status)"
  [ "$rss" -gt "$peak_kib" ] && peak_kib="$rss"
  sleep 0.2
done
wait "$holder"
hwm_kib="$(awk '/VmHWM/ {print $2}' /proc/$am_pid/status)"
echo "{\"connections\": $connections, \"am_idle_rss_kib\": $idle_kib, \"am_rss_peak_sampled_kib\": $peak_kib, \"am_vmhwm_kib\": $hwm_kib}"
