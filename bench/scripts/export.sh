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
# With STORAGE=s3 the storage is `acct storage --bucket` on an S3-protocol
# server on 127.0.0.1 (s3s-fs, as the tests install it: on the PATH or in
# ~/.cargo/bin) instead of the AM's embedded folder, and part 2 runs three
# times: no export, a batch every second to the embedded folder, and a batch
# every second to the bucket.
#
#   [STORAGE=s3] bash bench/scripts/export.sh [fill_seconds] [rate] [rate_seconds]
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
s3_pid=""
storage_pid=""
trap '[ -n "$am_pid" ] && kill "$am_pid" 2>/dev/null; [ -n "$storage_pid" ] && kill "$storage_pid" 2>/dev/null; [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null; rm -rf "$work"' EXIT

# STORAGE=s3: an S3-protocol server, and `acct storage` on a bucket there.
storage="${STORAGE:-folder}"
free_port() { # tcp|udp: a free port below the ephemeral range (which the OS hands out again)
  python3 - "$1" <<'PY'
import random, socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
for _ in range(1000):
    port = random.randint(20000, 32000)
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    sys.exit("no free port")
PY
}
if [ "$storage" = s3 ]; then
  s3s_fs="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
  [ -x "$s3s_fs" ] || { echo "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --features binary --locked"; exit 1; }
  s3_port="$(free_port tcp)"
  mkdir -p "$work/s3/acct"
  "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key bench-secret-key "$work/s3" \
    >"$work/s3.log" 2>&1 &
  s3_pid=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $s3_port), 1)" 2>/dev/null && break
    sleep 0.1
  done
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $s3_port), 1)" 2>/dev/null \
    || { echo "s3s-fs did not start"; cat "$work/s3.log"; exit 1; }
fi
start_storage() { # pki prefix; sets storage_address
  local pki="$1" prefix="$2" port
  port="$(free_port udp)"
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1 \
    "$BIN/acct" storage --pki "$pki" --bucket "s3://acct/$prefix" --endpoint "http://127.0.0.1:$s3_port" \
    --allow-http --listen "127.0.0.1:$port" >"$work/storage-$prefix.stdout" 2>"$work/storage-$prefix.stderr" &
  storage_pid=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$work/storage-$prefix.stdout" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "listening on" "$work/storage-$prefix.stdout" || { echo "acct storage did not start"; cat "$work/storage-$prefix.stderr"; exit 1; }
  storage_address="127.0.0.1:$port"
}
stop_storage() {
  kill -TERM "$storage_pid"; wait "$storage_pid" || true; storage_pid=""
}
# The storage needs the PKI before the AM's first start would make it.
make_pki() { # data_dir
  "$BIN/acct" init "$1/pki" >/dev/null
}

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
cold="$data/cold"
if [ "$storage" = s3 ]; then
  make_pki "$data"
  start_storage "$data/pki" fill
  cold="$work/s3/acct/fill"
  start_am "$data" --export-interval-ms 3600000 --export-records-max 1000000 --storage "$storage_address"
else
  start_am "$data" --export-interval-ms 3600000 --export-records-max 1000000
fi
"$BIN/loadgen" --am "$address" --pki "$data/pki" --providers 200 --sessions 2000 \
  --max --window 64 --duration "$fill_seconds" --quiet --json "$work/fill.json" >/dev/null
stored="$(python3 -c "import json; print(json.load(open('$work/fill.json'))['acked_stored'])")"
stop_am
# The exporter's own timing: from the first cut to the last delete.
python3 - "$data.stderr" "$cold" "$stored" "$shutdown_s" "$storage" <<'PY'
import json, os, re, sys, datetime
log, cold, stored, shutdown_s, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
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
print(json.dumps({"export": {"storage": target, "records": stored, "rows_exported": rows, "batches": batches,
    "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds), "parquet_bytes": size,
    "bytes_per_row": round(size / rows, 1), "sigterm_to_exit_s": shutdown_s}}))
PY

[ "$storage" = s3 ] && stop_storage

# 2. Ingest latency with and without exports.
modes="no-export export"
[ "$storage" = s3 ] && modes="no-export export export-s3"
for mode in $modes; do
  data="$work/$mode"
  mkdir -p "$data"
  cold="$data/cold"
  case "$mode" in
    no-export) start_am "$data" --no-export ;;
    export) start_am "$data" --export-interval-ms 1000 ;;
    export-s3)
      make_pki "$data"
      start_storage "$data/pki" ingest
      cold="$work/s3/acct/ingest"
      start_am "$data" --export-interval-ms 1000 --storage "$storage_address" ;;
  esac
  "$BIN/loadgen" --am "$address" --pki "$data/pki" --providers 1000 --sessions 5000 \
    --rate "$rate" --duration "$rate_seconds" --quiet --json "$work/$mode.json" >/dev/null
  stop_am
  [ "$mode" = export-s3 ] && stop_storage
  python3 - "$work/$mode.json" "$mode" "$cold" <<'PY'
import json, os, sys
report, mode, cold = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
files = [f for d, _, fs in os.walk(cold) for f in fs if f.endswith(".parquet")]
print(json.dumps({mode: {"rate": report["rate"] if "rate" in report else None,
    "stored_per_s": round(report["throughput_per_s"]), "p50_ms": report["latency_ms"]["p50"],
    "p99_ms": report["latency_ms"]["p99"], "p99_9_ms": report["latency_ms"]["p99_9"],
    "max_ms": report["latency_ms"]["max"], "files": len(files)}}))
PY
done
