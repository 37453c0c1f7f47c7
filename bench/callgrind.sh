#!/usr/bin/env bash
# bench/callgrind.sh BIN [CALLS]: instructions per call of a siphon binary.
#
# Runs BIN (a release build; `cargo build --profile profiling` keeps line
# tables for annotated source) under callgrind as bench/run.sh's load balancer
# (scripts/lb.py, UDP, two sipp backends on 127.0.0.1), warms it up with 200
# calls, then counts the instructions of every thread over CALLS more full
# calls (default 1000) and prints them per call. Deterministic to within a
# few percent, unlike CPU time on a shared 2-core machine, so it is the way
# to compare two builds of the hot path. SCRIPT_WORKERS=0 runs the script
# on the shard's thread instead of an executor's (`script.workers`).
set -euo pipefail
BIN=$(readlink -f "$1")
CALLS=${2:-1000}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/siphon-callgrind.XXXX)
PORT=15960 B1=15971 B2=15972
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
seq -f "user%05g;" 1 5000 | sed '1i SEQUENTIAL' >"$DIR/users.csv"
cat >"$DIR/siphon.yaml" <<YAML
listen: {udp: ["127.0.0.1:$PORT"], tcp: []}
script: {path: "$REPO/scripts/lb.py", workers: ${SCRIPT_WORKERS:-1}}
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 5, failure_threshold: 3}
      destinations:
        - {uri: "sip:backend1.example.com:5060", address: "127.0.0.1:$B1"}
        - {uri: "sip:backend2.example.com:5060", address: "127.0.0.1:$B2"}
server: {instance_id: "callgrind", drain_secs: 0}
log: {level: warn}
YAML
for port in $B1 $B2; do
    sipp -sf "$REPO/bench/scenarios/uas_call.xml" -aa -i 127.0.0.1 -p "$port" -nostdin \
        >"$DIR/uas-$port.log" 2>&1 </dev/null &
done
valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" \
    "$BIN" --config "$DIR/siphon.yaml" >"$DIR/siphon.log" 2>&1 &
VG=$!
for _ in $(seq 1 100); do
    grep -q "siphon ready" "$DIR/siphon.log" 2>/dev/null && break
    sleep 0.3
done
uac() {
    sipp -sf "$REPO/bench/scenarios/uac_call.xml" -inf "$DIR/users.csv" "127.0.0.1:$PORT" \
        -i 127.0.0.1 -r 100 -m "$1" -nostdin -recv_timeout 10000 -timeout 120s \
        >"$DIR/uac.log" 2>&1 </dev/null
}
uac 200
[ -n "${NO_ZERO:-}" ] && { uac "$CALLS"; kill -INT "$VG"; wait "$VG" 2>/dev/null || true; echo "full profile in $DIR/callgrind.out"; exit 0; }
callgrind_control --zero "$VG" >/dev/null 2>&1
uac "$CALLS"
callgrind_control --dump "$VG" >/dev/null 2>&1
sleep 1
kill "$VG"; wait "$VG" 2>/dev/null || true
summary=$(awk '/^summary:/ {print $2}' "$DIR/callgrind.out.1")
echo "$BIN: $((summary / CALLS)) instructions per call ($summary over $CALLS calls; run files in $DIR)"
