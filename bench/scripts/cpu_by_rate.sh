#!/usr/bin/env bash
# CPU per message, per thread, of `acct serve` and `loadgen` at each given
# rate (or in the closed loop), measured over a window after the warm-up.
#
#   BIN=target/release bash bench/scripts/cpu_by_rate.sh 2000 8000 22000 max
#
# Each argument is one run on a fresh AM: a rate (open loop, messages/s) or
# `max` (closed loop, WINDOW in flight per provider). Environment: PROVIDERS
# (1000), SESSIONS (5000), WINDOW (64), DURATION (16 s of sending), WARM
# (seconds after loadgen starts sending before the window opens: the window
# waits for loadgen's own "sending for" line, after it connected and signed
# its messages ahead, then WARM more; default 4 + 1 per 1,000 providers, the
# closed loop's ramp), SPAN (5 s window).
# Prints, per run: both processes' CPU over the window as % of one core, per
# thread name, µs per stored message, the UDP datagrams the kernel dropped
# for a full receive buffer (RcvbufErrors) and loadgen's throughput and
# latency, and the QUIC datagrams per message each way. Not a test; needs
# python3.
set -euo pipefail
BIN="${BIN:-target/release}"
PROVIDERS="${PROVIDERS:-1000}"
SESSIONS="${SESSIONS:-5000}"
WINDOW="${WINDOW:-64}"
DURATION="${DURATION:-16}"
SPAN="${SPAN:-5}"
hz="$(getconf CLK_TCK)"
work="$(mktemp -d)"
am_pid=""
cleanup() {
  [ -n "$am_pid" ] && kill -TERM "$am_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# CPU ticks per thread name of a process: "name ticks" lines, sorted.
threads() {
  for task in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(tr ' ' '_' <"$task/comm" 2>/dev/null)" \
      "$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}')"
  done 2>/dev/null | awk 'NF == 2 {a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
rcvbuf_errors() { awk '/^Udp:/ {getline; print $6; exit}' /proc/net/snmp; }

for run in "$@"; do
  data="$work/data"
  rm -rf "$data"
  mkdir -p "$data"
  "$BIN/acct" serve --data "$data" --listen 127.0.0.1:0 --no-export >"$work/am.stdout" 2>"$work/am.stderr" &
  am_pid=$!
  for _ in $(seq 1 600); do grep -q "listening on" "$work/am.stdout" 2>/dev/null && break; sleep 0.1; done
  address="$(sed -n 's/^acct serve: listening on //p' "$work/am.stdout")"
  if [ "$run" = max ]; then
    mode=(--max --window "$WINDOW" --messages-max 3000000)
  else
    mode=(--rate "$run")
  fi
  warm="${WARM:-$((4 + PROVIDERS / 1000))}"
  "$BIN/loadgen" --am "$address" --pki "$data/pki" --duration "$DURATION" --duplicates 0.01 \
    --json "$work/loadgen.json" --providers "$PROVIDERS" --sessions "$SESSIONS" "${mode[@]}" \
    >/dev/null 2>"$work/loadgen.stderr" &
  loadgen_pid=$!
  # Setup (connecting, opening sessions, signing ahead) takes from seconds
  # to a minute with the machine and the count: wait for the line that
  # starts the timed phase (at most 10 minutes).
  for _ in $(seq 1 6000); do
    grep -q "sending for" "$work/loadgen.stderr" 2>/dev/null && break
    kill -0 "$loadgen_pid" 2>/dev/null || break
    sleep 0.1
  done
  sleep "$warm"
  threads "$am_pid" >"$work/am0"
  threads "$loadgen_pid" >"$work/lg0"
  drops0="$(rcvbuf_errors)"
  sleep "$SPAN"
  threads "$am_pid" >"$work/am1"
  threads "$loadgen_pid" >"$work/lg1"
  drops1="$(rcvbuf_errors)"
  wait "$loadgen_pid"
  kill -TERM "$am_pid"
  wait "$am_pid" || true
  am_pid=""
  python3 - "$work" "$run" "$SPAN" "$hz" "$((drops1 - drops0))" <<'EOF'
import json, sys
work, run, span, hz, drops = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
def load(name):
    return {k: int(v) for k, v in (line.split() for line in open(f"{work}/{name}"))}
report = json.load(open(f"{work}/loadgen.json"))
rate = report["throughput_per_s"]
def side(label, before, after):
    b, a = load(before), load(after)
    per = {k: (a[k] - b.get(k, 0)) / hz / span for k in a if a[k] - b.get(k, 0) > 0}
    total = sum(per.values())
    parts = " ".join(f"{k}={v * 100:.0f}%" for k, v in sorted(per.items()))
    print(f"  {label}: {total * 100:.0f}% of a core, {total / rate * 1e6:.1f} µs/msg ({parts})")
l = report["latency_ms"]
print(f"{run}: {rate:,.0f} stored/s, p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms, "
      f"p99.9 {l['p99_9']:.1f} ms, max {l['max']:.1f} ms; datagrams dropped in the window: {drops}")
side("acct", "am0", "am1")
side("loadgen", "lg0", "lg1")
q, n = report.get("quic"), max(1, report["acked_stored"] + report["acked_duplicate"])
if q:
    print(f"  QUIC per stored message: {q['datagrams_sent'] / n:.2f} datagrams to the AM "
          f"({q['send_calls'] / n:.2f} calls), {q['datagrams_received'] / n:.2f} from it "
          f"({q['receive_calls'] / n:.2f} batches); ACK frames {q['ack_frames_sent'] / n:.2f} sent, "
          f"{q['ack_frames_received'] / n:.2f} received; STREAM frames {q['stream_frames_sent'] / n:.2f} sent, "
          f"{q['stream_frames_received'] / n:.2f} received; flow control {q['flow_control_frames_sent'] / n:.2f} sent, "
          f"{q['flow_control_frames_received'] / n:.2f} received; PING {q['ping_frames_sent'] / n:.2f} sent, "
          f"{q['ping_frames_received'] / n:.2f} received; {q['packets_lost']} packets lost")
EOF
done
