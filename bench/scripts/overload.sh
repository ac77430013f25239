#!/usr/bin/env bash
# Overload control, one setting at a time: `acct serve` with a given
# `ingest.queue_delay_target_ms` (0: shedding off) on a fresh data folder,
# driven by loadgen with 1,000 providers and 5,000 sessions, 1% of the
# messages retransmitted.
#
#   BIN=target/release bash bench/scripts/overload.sh closed TARGET_MS [SECONDS]
#       closed loop, 64 in flight per provider (the harness's throughput
#       run): stored msgs/s, BUSY answers, the AM's shed counters
#   BIN=target/release bash bench/scripts/overload.sh steps TARGET_MS RATE:SECONDS,...
#       open loop in phases (loadgen --rate-steps, with its audit): per
#       phase the goodput, the p99 of stored and busy answers (each attempt
#       from its send), the p99 from the schedule, and the AM socket's UDP
#       receive drops over the run
#
# INGEST='key = value; key = value' adds settings to the AM's [ingest] table
# (an A/B of another setting; not queue_delay_target_ms, the second argument); LINGER_MS=L gives the open loop's providers
# a linger (loadgen --linger-ms, default 0); HOLD=1 makes each hold what falls
# due while a write of its is unanswered (loadgen --hold-unanswered).
#
# Not a test; needs python3. Every server listens on 127.0.0.1.
set -euo pipefail
BIN="${BIN:-target/release}"
mode="${1:?closed or steps}" target="${2:?queue delay target, ms}"
work="$(mktemp -d)"
am_pid=""
cleanup() {
  if [ -n "$am_pid" ]; then kill -TERM "$am_pid" 2>/dev/null || true; wait "$am_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A config of acct init's with the target set.
"$BIN/acct" init "$work/node" >/dev/null
config="$(ls "$work"/node/*.toml | head -1)"
python3 - "$config" "$target" "${INGEST:-}" <<'PY'
import re, sys
path, target, extra = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
assert re.search(r"^\[ingest\]$", text, re.M), "acct init's config has no [ingest] table"
lines = "".join(f"{line.strip()}\n" for line in extra.split(";") if line.strip())
text = re.sub(r"^\[ingest\]\n", f"[ingest]\nqueue_delay_target_ms = {target}\n{lines}", text, count=1, flags=re.M)
open(path, "w").write(text)
PY
metrics_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN/acct" serve --config "$config" --listen 127.0.0.1:0 --no-export --metrics "127.0.0.1:$metrics_port" \
  >"$work/am.stdout" 2>"$work/am.stderr" &
am_pid=$!
for _ in $(seq 1 300); do grep -q "listening on" "$work/am.stdout" 2>/dev/null && break; sleep 0.1; done
address="$(sed -n 's/^acct serve: listening on //p' "$work/am.stdout")"
[ -n "$address" ] || { cat "$work/am.stderr" >&2; exit 1; }
udp_drops() { awk -v port=":$(printf '%04X' "${address##*:}")" '$2 ~ port"$" {print $NF}' /proc/net/udp | head -1; }
drops_before="$(udp_drops)"
common=(--am "$address" --pki "$work/node" --providers 1000 --sessions 5000 --duplicates 0.01 --quiet --json "$work/report.json")
case "$mode" in
  closed)
    "$BIN/loadgen" "${common[@]}" --max --window 64 --duration "${3:-20}" --messages-max 3000000 >/dev/null ;;
  steps)
    steps="${3:?RATE:SECONDS,...}"
    messages="$(python3 -c "import sys; print(max(1000, sum(int(r) * int(s) for r, s in (x.split(':') for x in sys.argv[1].split(',')))))" "$steps")"
    "$BIN/loadgen" "${common[@]}" --rate-steps "$steps" --linger-ms "${LINGER_MS:-0}" ${HOLD:+--hold-unanswered} --messages-max "$messages" --audit >/dev/null ;;
  *) echo "overload.sh: closed or steps, not $mode" >&2; exit 2 ;;
esac
drops_after="$(udp_drops)"
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
  "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics"
python3 - "$work/report.json" "$work/metrics" "$target" "$(( ${drops_after:-0} - ${drops_before:-0} ))" <<'PY'
import json, sys
report, metrics, target, drops = json.load(open(sys.argv[1])), open(sys.argv[2]).read(), sys.argv[3], sys.argv[4]
shed = {line.split('reason="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines() if line.startswith("acct_shed_messages_total{")}
busy = report["attempt_latency_ms"]["busy"]
print(f"target {target} ms: {report['throughput_per_s']:.0f} stored/s, latency p99 {report['latency_ms']['p99']:.0f} ms,"
      f" BUSY answers {busy['count']}, shed by the AM {shed}, UDP drops {drops}, lost {report['lost']}, doubled {report['double_stored']}")
for phase in report.get("phases") or []:
    print(f"  {phase['rate']:>7}/s for {phase['end_s'] - phase['start_s']:>3} s: goodput {phase['goodput_per_s']:>7.0f}/s,"
          f" stored p99 {phase['stored_attempt_ms']['p99']:>7.1f} ms, busy {phase['busy']:>7} (p99 {phase['busy_attempt_ms']['p99']:.1f} ms),"
          f" from the schedule p99 {phase['latency_ms']['p99']:.1f} ms")
PY
