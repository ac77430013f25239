#!/usr/bin/env bash
# Export figures with the real binaries (release), one run:
#
# 1. Export throughput, end to end to an acked file: fill the hot store with
#    loadgen (export held back), then SIGTERM `acct serve`, which exports
#    every committed record before it exits: cut, read, Parquet encode,
#    sign, QUIC to the embedded storage, the storage's checks (every row
#    read back), fsync, rename, ack, delete from RocksDB.
# 2. Ingest latency with and without exports running: the same open-loop
#    loadgen run twice, with `--no-export` and with a batch every second.
#
#   bash bench/scripts/export.sh [fill_seconds] [rate] [rate_seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
fill_seconds="${1:-8}"
rate="${2:-20000}"
rate_seconds="${3:-30}"
# BIN: prebuilt release binaries (as for harness.sh); without it, build them
# (bench/scripts/build.sh).
if [ -z "${BIN:-}" ]; then
  bash bench/scripts/build.sh >/dev/null
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
work="$(mktemp -d)"
am_pid=""
trap '[ -n "$am_pid" ] && kill "$am_pid" 2>/dev/null; rm -rf "$work"' EXIT

start_am() { # data_dir extra_args...
  local data="$1"; shift
  "$BIN/acct" serve --data "$data" --listen 127.0.0.1:0 "$@" >"$data.stdout" 2>"$data.stderr" &
  am_pid=$!
  for _ in $(seq 1 600); do
    grep -q "listening on" "$data.stdout" 2>/dev/null && break
    sleep 0.1
  done
  address="$(sed -n 's/^acct serve: listening on //p' "$data.stdout")"
  [ -n "$address" ] || { echo "acct serve did not start"; cat "$data.stderr"; exit 1; }
}

stop_am() { # SIGTERM, wait for the exit; sets shutdown_s
  local started ended
  started="$(date +%s.%N)"
  kill -TERM "$am_pid"
  wait "$am_pid" || true
  ended="$(date +%s.%N)"
  am_pid=""
  shutdown_s="$(echo "$started $ended" | awk '{printf "%.2f", $2 - $1}')"
}

# 1. Export throughput.
data="$work/fill"
mkdir -p "$data"
start_am "$data" --export-interval-ms 3600000 --export-records-max 1000000
"$BIN/loadgen" --am "$address" --pki "$data/pki" --providers 200 --sessions 2000 \
  --max --window 64 --duration "$fill_seconds" --quiet --json "$work/fill.json" >/dev/null
stored="$(python3 -c "import json; print(json.load(open('$work/fill.json'))['acked_stored'])")"
stop_am
# The exporter's own timing: from the first cut to the last delete.
python3 - "$data.stderr" "$data/cold" "$stored" "$shutdown_s" <<'PY'
import json, os, re, sys, datetime
log, cold, stored, shutdown_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
strip = re.compile(r"\x1b\[[0-9;]*m")
times, rows, batches = [], 0, 0
begin = None
for line in open(log):
    line = strip.sub("", line)
    stamp = line.split(" ", 1)[0]
    if "exporting what is committed" in line:
        begin = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    m = re.search(r"exported batch=\S+ rows=(\d+)", line)
    if m:
        rows += int(m.group(1)); batches += 1
        times.append(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")))
files = [os.path.join(d, f) for d, _, fs in os.walk(cold) for f in fs if f.endswith(".parquet")]
size = sum(os.path.getsize(f) for f in files)
seconds = (times[-1] - begin).total_seconds()
print(json.dumps({"export": {"records": stored, "rows_exported": rows, "batches": batches,
    "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds), "parquet_bytes": size,
    "bytes_per_row": round(size / rows, 1), "sigterm_to_exit_s": shutdown_s}}))
PY

# 2. Ingest latency with and without exports.
for mode in no-export export; do
  data="$work/$mode"
  mkdir -p "$data"
  if [ "$mode" = no-export ]; then
    start_am "$data" --no-export
  else
    start_am "$data" --export-interval-ms 1000
  fi
  "$BIN/loadgen" --am "$address" --pki "$data/pki" --providers 1000 --sessions 5000 \
    --rate "$rate" --duration "$rate_seconds" --quiet --json "$work/$mode.json" >/dev/null
  stop_am
  python3 - "$work/$mode.json" "$mode" "$data" <<'PY'
import json, os, sys
report, mode, data = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
files = [f for d, _, fs in os.walk(os.path.join(data, "cold")) for f in fs if f.endswith(".parquet")]
print(json.dumps({mode: {"rate": report["rate"] if "rate" in report else None,
    "stored_per_s": round(report["throughput_per_s"]), "p50_ms": report["latency_ms"]["p50"],
    "p99_ms": report["latency_ms"]["p99"], "p99_9_ms": report["latency_ms"]["p99_9"],
    "max_ms": report["latency_ms"]["max"], "files": len(files)}}))
PY
done
