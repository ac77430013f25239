#!/usr/bin/env bash
# The Accounting Storage away for minutes under load: `acct serve` with an
# external `acct storage` and an open-loop loadgen; the storage is stopped
# (SIGKILL) after a warm-up and started again `outage` seconds later. Reports
# the hot-store backlog at its peak, how long the exports took to catch up,
# the ingest ack latency over the whole run, and the audit (hot store plus
# cold files: nothing lost, nothing doubled; `acct audit` on the files).
#
#   bash bench/scripts/storage_outage.sh [outage_seconds] [rate]
#
# Settings (environment): BIN (prebuilt binaries; default: build release).
set -euo pipefail
cd "$(dirname "$0")/../.."
outage="${1:-180}"
rate="${2:-5000}"
warmup=10
if [ -z "${BIN:-}" ]; then
  bash bench/scripts/build.sh >/dev/null
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if "'"$1"'" == "udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
metric() { # name
  python3 - "$metrics_port" "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(next((int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(sys.argv[2] + " ")), 0))
PY
}
wait_line() { # file needle
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "storage_outage: $1 never said $2"; exit 1
}

data="$work/am"
cold="$work/cold"
mkdir -p "$data" "$cold"
"$BIN/acct" init "$data/pki" --providers 0 --users 0 >/dev/null
storage_port="$(port udp)"
metrics_port="$(port tcp)"
start_storage() {
  "$BIN/acct" storage --pki "$data/pki" --folder "$cold" --listen "127.0.0.1:$storage_port" \
    >"$work/storage.out" 2>>"$work/storage.err" &
  storage_pid=$!
  pids+=("$storage_pid")
  wait_line "$work/storage.out" "listening on"
}
start_storage
"$BIN/acct" serve --data "$data" --listen 127.0.0.1:0 --storage "127.0.0.1:$storage_port" \
  --export-interval-ms 1000 --metrics "127.0.0.1:$metrics_port" >"$work/am.out" 2>"$work/am.err" &
am_pid=$!
pids+=("$am_pid")
wait_line "$work/am.out" "listening on"
address="$(sed -n 's/^acct serve: listening on //p' "$work/am.out")"

duration=$((warmup + outage + 20))
"$BIN/loadgen" --am "$address" --pki "$data/pki" --providers 100 --sessions 1000 --users 100 \
  --rate "$rate" --duration "$duration" --drain 60 --audit --cold "$cold" --quiet \
  --json "$work/loadgen.json" >"$work/loadgen.out" 2>&1 &
loadgen_pid=$!
pids+=("$loadgen_pid")
sleep "$warmup"
kill -9 "$storage_pid"
echo "storage_outage: storage down for $outage s under $rate msgs/s"
peak=0
for _ in $(seq 1 "$outage"); do
  sleep 1
  backlog="$(metric acct_export_backlog_records)"
  [ "$backlog" -gt "$peak" ] && peak="$backlog"
done
disk_bytes="$(metric acct_store_disk_bytes)"
start_storage
back="$(date +%s.%N)"
caught_up=""
for _ in $(seq 1 1200); do
  backlog="$(metric acct_export_backlog_records)"
  if [ "$backlog" -lt "$rate" ]; then
    # Less than a second of traffic waits: the backlog is gone.
    caught_up="$(python3 -c "import time; print(f'{time.time() - $back:.1f}')")"
    break
  fi
  sleep 0.5
done
wait "$loadgen_pid" || { echo "storage_outage: loadgen's audit failed"; cat "$work/loadgen.out"; exit 1; }
cat "$work/loadgen.out"
kill -TERM "$am_pid"; wait "$am_pid" || true
"$BIN/acct" audit "$cold" | tail -1
echo "storage_outage: backlog peak $peak records ($((disk_bytes / 1048576)) MiB in RocksDB at the end of the outage); caught up ${caught_up:-never} s after the storage returned"
[ -n "$caught_up" ]
