#!/usr/bin/env bash
# Crash campaign: `acct serve` with an external `acct storage`, under an
# open-loop `loadgen`, killed with SIGKILL at random moments; the storage
# killed too. Then the audit: every message acked as stored is in the AM's
# hot store or in cold storage exactly once, and `acct audit` re-verifies
# every exported row.
#
#   bash bench/scripts/soak.sh                 # 100 AM kills, 20 storage kills (release build)
#   AM_KILLS=5 STORAGE_KILLS=2 BIN=target/debug bash bench/scripts/soak.sh   # the short version CI runs
#
# Settings (environment):
#   AM_KILLS       SIGKILLs of the AM (default 100)
#   STORAGE_KILLS  SIGKILLs of the storage, spread over the AM kills (default 20)
#   SEED           seed of the kill moments (default: the time; printed)
#   RATE           loadgen's messages/s (default 3000)
#   BIN            folder with prebuilt `acct` and `loadgen` (default: build release)
#   OUT            write the summary JSON here (default: print only)
#
# Exit status: 0 only if every kill happened, the audit found nothing lost
# and nothing doubled, and `acct audit` passed.
set -euo pipefail
cd "$(dirname "$0")/../.."
am_kills="${AM_KILLS:-100}"
storage_kills="${STORAGE_KILLS:-20}"
seed="${SEED:-$(date +%s)}"
rate="${RATE:-3000}"
if [ -z "${BIN:-}" ]; then
  bash bench/scripts/build.sh >/dev/null
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
acct="$BIN/acct"
loadgen="$BIN/loadgen"
[ -x "$acct" ] && [ -x "$loadgen" ] || { echo "soak: $acct or $loadgen missing"; exit 2; }
echo "soak: $am_kills AM kills, $storage_kills storage kills, seed $seed, $rate msgs/s"

work="$(mktemp -d)"
am_pid=""
storage_pid=""
loadgen_pid=""
cleanup() {
  for pid in "$loadgen_pid" "$am_pid" "$storage_pid"; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_udp_port() {
  python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A uniform random number in [low, high) from the seeded sequence.
draw=0
uniform() { # low high
  draw=$((draw + 1))
  awk -v seed="$seed" -v n="$draw" -v low="$1" -v high="$2" \
    'BEGIN { srand(seed * 1000 + n); for (i = 0; i < 3; i++) r = rand(); printf "%.3f", low + (high - low) * r }'
}

data="$work/am"
cold="$work/cold"
mkdir -p "$data" "$cold"
"$acct" init "$data/pki" --providers 0 --users 0 >/dev/null
am_port="$(free_udp_port)"
storage_port="$(free_udp_port)"
metrics_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
sessions=500
starts=0

wait_for() { # file needle pid what
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "soak: $4 exited"; tail -20 "$1.err" 2>/dev/null; exit 1; }
    sleep 0.1
  done
  echo "soak: $4 did not start within 60 s"
  exit 1
}

start_storage() {
  : >"$work/storage.out"
  "$acct" storage --pki "$data/pki" --folder "$cold" --listen "127.0.0.1:$storage_port" \
    >"$work/storage.out" 2>>"$work/storage.out.err" &
  storage_pid=$!
  wait_for "$work/storage.out" "listening on" "$storage_pid" "acct storage"
}

start_am() {
  starts=$((starts + 1))
  : >"$work/am.out"
  "$acct" serve --data "$data" --listen "127.0.0.1:$am_port" --storage "127.0.0.1:$storage_port" \
    --export-interval-ms 500 --metrics "127.0.0.1:$metrics_port" >"$work/am.out" 2>>"$work/am.out.err" &
  am_pid=$!
  wait_for "$work/am.out" "listening on" "$am_pid" "acct serve"
}

start_storage
start_am

# Long enough that every kill lands in loadgen's sending phase: at most
# 2.5 s between kills (4 with a storage kill), plus restarts.
duration=$((am_kills * 3 + storage_kills * 2 + 20))
"$loadgen" --am "127.0.0.1:$am_port" --pki "$data/pki" --providers 50 --sessions "$sessions" --users 50 \
  --rate "$rate" --duration "$duration" --drain 120 --seed "$seed" --duplicates 0.01 \
  --audit --cold "$cold" --quiet --json "$work/loadgen.json" >"$work/loadgen.out" 2>"$work/loadgen.err" &
loadgen_pid=$!

# Let loadgen open its sessions (credential requests) before the first kill:
# the AM's acct_sessions gauge counts them.
open_sessions() {
  python3 - "$metrics_port" <<'PY'
import sys, urllib.request
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
except OSError:
    print(0)
    sys.exit()
print(next((int(float(line.split()[1])) for line in text.splitlines() if line.startswith("acct_sessions ")), 0))
PY
}
for _ in $(seq 1 1200); do
  [ "$(open_sessions)" -ge "$sessions" ] && break
  kill -0 "$loadgen_pid" 2>/dev/null || { echo "soak: loadgen exited early"; cat "$work/loadgen.err"; exit 1; }
  sleep 0.1
done
[ "$(open_sessions)" -ge "$sessions" ] || { echo "soak: loadgen did not open its sessions within 120 s"; exit 1; }
sleep "$(uniform 2 4)"

kills_done=0
storage_kills_done=0
started_s="$(date +%s)"
deadline=$((started_s + duration - 10))
# Storage kills at evenly spread AM kill indices.
[ "$storage_kills" -le "$am_kills" ] || { echo "soak: at most one storage kill per AM kill"; exit 2; }
storage_every=$(( storage_kills > 0 ? am_kills / storage_kills : am_kills + 1 ))
for i in $(seq 1 "$am_kills"); do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "soak: out of time after $kills_done kills"; break; }
  kill -0 "$loadgen_pid" 2>/dev/null || { echo "soak: loadgen exited early"; cat "$work/loadgen.err"; exit 1; }
  sleep "$(uniform 0.2 2.5)"
  kill -9 "$am_pid"
  wait "$am_pid" 2>/dev/null || true
  kills_done=$((kills_done + 1))
  if [ "$storage_kills_done" -lt "$storage_kills" ] && [ $((i % storage_every)) -eq 0 ]; then
    # The storage dies while the AM is down or while it exports.
    sleep "$(uniform 0 0.5)"
    kill -9 "$storage_pid"
    wait "$storage_pid" 2>/dev/null || true
    storage_kills_done=$((storage_kills_done + 1))
    start_am
    sleep "$(uniform 0 1.5)"
    start_storage
  else
    start_am
  fi
done
echo "soak: $kills_done AM kills, $storage_kills_done storage kills in $(( $(date +%s) - started_s )) s; waiting for loadgen's audit"

loadgen_status=0
wait "$loadgen_pid" || loadgen_status=$?
loadgen_pid=""
cat "$work/loadgen.out"
# Stop the AM cleanly: it exports what is left; then every row is in cold
# storage and `acct audit` checks each signature and finds doubles.
kill -TERM "$am_pid"
wait "$am_pid" || { echo "soak: acct serve did not exit cleanly"; exit 1; }
am_pid=""
audit_status=0
"$acct" audit "$cold" >"$work/audit.out" 2>&1 || audit_status=$?
tail -5 "$work/audit.out"

python3 - "$work/loadgen.json" "$kills_done" "$storage_kills_done" "$am_kills" "$storage_kills" \
  "$loadgen_status" "$audit_status" "$seed" "${OUT:-}" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
kills, storage_kills, want_kills, want_storage = map(int, sys.argv[2:6])
loadgen_status, audit_status, seed, out = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8], sys.argv[9]
audit = report.get("audit") or {}
summary = {
    "seed": int(seed),
    "am_kills": kills,
    "storage_kills": storage_kills,
    "messages_sent": report["sent_accounting"],
    "acked_as_stored": audit.get("acked_as_stored"),
    "stored_once": audit.get("stored_once"),
    "lost": audit.get("lost"),
    "doubled": audit.get("double_stored"),
    "stored_unacked": audit.get("stored_unacked"),
    "connections_lost": report["connections_lost"],
    "unanswered": report["unanswered"],
    "acct_audit_passed": audit_status == 0,
}
print(json.dumps(summary, indent=2))
if out:
    json.dump(summary, open(out, "w"), indent=2)
ok = (
    kills == want_kills
    and storage_kills == want_storage
    and loadgen_status == 0
    and audit_status == 0
    and summary["lost"] == 0
    and summary["doubled"] == 0
    and (summary["acked_as_stored"] or 0) > 0
)
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
