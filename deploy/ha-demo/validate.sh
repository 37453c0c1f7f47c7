#!/usr/bin/env bash
# The HA demo and its failover proof: a front LB over two backend siphon nodes
# sharing one Redis, all on 127.0.0.1. Eight assertions, each printed as PASS or
# FAIL; the last line is `ALL 8 ASSERTIONS PASSED`, or the exit code is 1.
#
#   SIPHON_BIN=target/release/siphon deploy/ha-demo/validate.sh
#
# Needs only the siphon binary, python3 and redis-server. Environment:
#   SIPHON_BIN          the binary (default target/release/siphon)
#   HA_DEMO_BASE_PORT   first port used (default 61400; it uses base..base+160,
#                       above the kernel's ephemeral range so tests that pick
#                       free ports do not collide with it)
#   HA_DEMO_KEEP        1 keeps the work directory (logs) even on success
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CHECK="$HERE/check.py"
UA="$HERE/ua.py"

SIPHON_BIN="${SIPHON_BIN:-target/release/siphon}"
# A relative path is taken from the current directory, else from the repo root.
if [ ! -x "$SIPHON_BIN" ] && [ -x "$ROOT/$SIPHON_BIN" ]; then
    SIPHON_BIN="$ROOT/$SIPHON_BIN"
fi

BASE="${HA_DEMO_BASE_PORT:-61400}"
LB_PORT=$BASE
BACKEND_PORT=([1]=$((BASE + 1)) [2]=$((BASE + 2)))
LB_ADMIN="127.0.0.1:$((BASE + 10))"
BACKEND_ADMIN=([1]="127.0.0.1:$((BASE + 11))" [2]="127.0.0.1:$((BASE + 12))")
LB_METRICS_PORT=$((BASE + 20))
REDIS_PORT=$((BASE + 30))
UA_BASE=$((BASE + 100))
DOMAIN="example.com"
PROBE_INTERVAL=1   # siphon-frontend.yaml: probe interval_secs
PROBE_THRESHOLD=2  # siphon-frontend.yaml: probe failure_threshold
DRAIN_SECS=3       # siphon-backend.yaml: server.drain_secs
BACKEND_URI=([1]="sip:backend1.example.com" [2]="sip:backend2.example.com")
ADMIN_MAP="backend1=${BACKEND_ADMIN[1]},backend2=${BACKEND_ADMIN[2]}"

# The subscribers: alice, 50 more, and one whose phone rings for 2 s (the call
# still in flight while its backend drains). Each has its own Contact port.
USERS="alice"
for i in $(seq -w 1 50); do USERS="$USERS,user$i"; done
FIFTY="${USERS#alice,}"
USERS="$USERS,slowpoke"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/siphon-ha-demo.XXXXXX")"
BACKEND_PID=([1]="" [2]="")
TOTAL=8
KEEP="${HA_DEMO_KEEP:-0}"
# shellcheck source=../demo-lib.sh
. "$HERE/../demo-lib.sh"

# ---------------------------------------------------------------------------
# Starting the pieces
# ---------------------------------------------------------------------------

start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
    PIDS+=($!)
    local i
    for i in $(seq 1 100); do
        if python3 - "$REDIS_PORT" <<'EOF' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
EOF
        sleep 0.1
    done
    show_tail "$WORK/redis.log"
    fail_now "redis-server did not answer PING on port $REDIS_PORT"
}

# start_backend N LOGFILE: backend N (1 or 2) from the shared config.
start_backend() {
    local n=$1 logfile=$2
    env -u RUST_LOG NO_COLOR=1 SIPHON_INSTANCE="backend$n" BACKEND_PORT="${BACKEND_PORT[$n]}" \
        BACKEND_ADMIN_PORT="${BACKEND_ADMIN[$n]##*:}" BACKEND_NAME="backend$n.example.com" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        "$SIPHON_BIN" --config "$HERE/siphon-backend.yaml" >"$logfile" 2>&1 &
    BACKEND_PID[n]=$!
    PIDS+=($!)
    wait_ready "$logfile" "${BACKEND_PID[$n]}" "backend$n"
}

start_lb() {
    env -u RUST_LOG NO_COLOR=1 LB_PORT="$LB_PORT" BACKEND1_PORT="${BACKEND_PORT[1]}" \
        BACKEND2_PORT="${BACKEND_PORT[2]}" LB_ADMIN_PORT="${LB_ADMIN##*:}" \
        LB_METRICS_PORT="$LB_METRICS_PORT" \
        "$SIPHON_BIN" --config "$HERE/siphon-frontend.yaml" >"$WORK/lb.log" 2>&1 &
    LB_PID=$!
    PIDS+=($!)
    wait_ready "$WORK/lb.log" "$LB_PID" "the front LB"
}

start_ua() {
    python3 "$UA" serve --users "$USERS" --base-port "$UA_BASE" --ring slowpoke=2 \
        >"$WORK/ua.log" 2>&1 &
    PIDS+=($!)
    python3 "$CHECK" wait-log "$WORK/ua.log" "^READY" 5 || {
        show_tail "$WORK/ua.log"
        fail_now "the callee UA did not start"
    }
}

# ua_register [--only U,...]: REGISTER through the LB (contacts on the UA).
ua_register() {
    python3 "$UA" register --lb "127.0.0.1:$LB_PORT" --domain "$DOMAIN" \
        --users "$USERS" --base-port "$UA_BASE" "$@"
}

# ua_call USERS [--expect CODE]: call each user through the LB.
ua_call() {
    local users=$1
    shift
    python3 "$UA" call --lb "127.0.0.1:$LB_PORT" --domain "$DOMAIN" --user "$users" "$@"
}

# backend_number NAME: 1 for backend1, 2 for backend2, empty otherwise.
backend_number() {
    case "$1" in
    backend1) echo 1 ;;
    backend2) echo 2 ;;
    esac
}


# ---------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------

[ -x "$SIPHON_BIN" ] || fail_now "SIPHON_BIN=$SIPHON_BIN is not an executable (build it: cargo build --release)"
command -v python3 >/dev/null || fail_now "python3 not found"
command -v redis-server >/dev/null || fail_now "redis-server not found (apt-get install redis-server)"
PORTS="$LB_PORT ${BACKEND_PORT[1]} ${BACKEND_PORT[2]} ${LB_ADMIN##*:} ${BACKEND_ADMIN[1]##*:} \
${BACKEND_ADMIN[2]##*:} $LB_METRICS_PORT $REDIS_PORT"
for i in $(seq 0 51); do PORTS="$PORTS $((UA_BASE + i))"; done
# shellcheck disable=SC2086
python3 "$CHECK" free-ports $PORTS || fail_now "pick other ports with HA_DEMO_BASE_PORT"

log "siphon HA demo: LB 127.0.0.1:$LB_PORT, backends :${BACKEND_PORT[1]} :${BACKEND_PORT[2]}, redis :$REDIS_PORT"
log "binary $SIPHON_BIN, logs in $WORK"
start_redis
start_backend 1 "$WORK/backend1.log"
start_backend 2 "$WORK/backend2.log"
start_ua
start_lb

# ---------------------------------------------------------------------------
# 1. Every node is alive and ready
# ---------------------------------------------------------------------------
status=0
detail=""
for admin in "$LB_ADMIN" "${BACKEND_ADMIN[1]}" "${BACKEND_ADMIN[2]}"; do
    for endpoint in health ready; do
        code=$(python3 "$CHECK" status "http://$admin/admin/$endpoint")
        if [ "$code" != 200 ]; then
            status=1
            detail="$detail $admin/admin/$endpoint -> $code"
        fi
    done
done
result 1 "every node's /admin/health and /admin/ready answer 200" $status "${detail:-3 nodes}"

# ---------------------------------------------------------------------------
# 2. alice's binding is on the backend the LB's hash picks, and only there
# ---------------------------------------------------------------------------
status=0
ua_register --only alice >"$WORK/register-alice.out" 2>&1 || status=1
ALICE_BACKEND=$(python3 "$CHECK" lb-dest "$WORK/lb.log" REGISTER alice 2>>"$WORK/checks.err")
A=$(backend_number "$ALICE_BACKEND")
if [ "$status" = 0 ] && [ -n "$A" ]; then
    python3 "$CHECK" placement "$WORK/lb.log" "$ADMIN_MAP" alice >/dev/null 2>"$WORK/placement-alice.err" || status=1
else
    status=1
fi
result 2 "REGISTER alice through the LB gets 200 and only the hashed backend holds her" $status \
    "$(cat "$WORK/register-alice.out"); LB picked ${ALICE_BACKEND:-none}"
[ "$status" = 0 ] || { cat "$WORK/placement-alice.err" 2>/dev/null; show_tail "$WORK/lb.log"; }
if [ -z "$A" ]; then
    fail_now "cannot go on without knowing alice's backend"
fi
B=$((3 - A)) # the other backend

# ---------------------------------------------------------------------------
# 3. A call to alice through the LB: final 200 (not the 100), ACK and BYE via
#    the recorded route
# ---------------------------------------------------------------------------
status=0
ua_call alice >"$WORK/call-alice.out" 2>&1 || status=1
line=$(cat "$WORK/call-alice.out")
call_id=$(sed -n 's/.*call_id=\([^ ]*\).*/\1/p' "$WORK/call-alice.out")
case "$line" in *"final=200 "*"routes=4 bye=200"*) ;; *) status=1 ;; esac
case "$line" in *"provisional=[100"*) ;; *) status=1 ;; esac
# alice's UA saw the INVITE, the ACK and the BYE, each through the LB, her
# backend, and the LB again: her REGISTER left a Path through the LB (RFC
# 3327), the only way to a phone behind NAT (4 Vias: the caller's, the LB's,
# the backend's, the LB's; 4 Record-Routes: the backend's, the LB's toward
# the caller, and on the way to alice both sides of the LB, hers with a
# token for the address her REGISTER came from).
for method in INVITE ACK BYE; do
    if [ -z "$call_id" ] || ! grep -q "RECV $method user=alice call_id=$call_id vias=4" "$WORK/ua.log"; then
        status=1
        line="$line; alice's UA did not get the $method through the LB, her backend and the LB"
    fi
done
result 3 "INVITE alice through the LB reaches her UA; ACK and BYE follow Record-Route" $status "$line"

# ---------------------------------------------------------------------------
# 4. 50 users: each binding sits on the backend the LB's hash names
# ---------------------------------------------------------------------------
status=0
ua_register --only "$FIFTY" >"$WORK/register-50.out" 2>&1 || status=1
registered=$(count_matching "$WORK/register-50.out" "^REGISTER user[0-9]+ 200$")
python3 "$CHECK" placement "$WORK/lb.log" "$ADMIN_MAP" "$FIFTY" >"$WORK/placement.out" \
    2>"$WORK/placement.err" || status=1
on_a=$(count_matching "$WORK/placement.out" " backend$A$")
on_b=$(count_matching "$WORK/placement.out" " backend$B$")
[ "$registered" = 50 ] && [ "$on_a" -gt 0 ] && [ "$on_b" -gt 0 ] && [ $((on_a + on_b)) = 50 ] || status=1
result 4 "50 users register through the LB, each on the backend its hash names" $status \
    "$registered x 200; backend$A holds $on_a, backend$B holds $on_b"
[ "$status" = 0 ] || head -n 20 "$WORK/placement.err"
USERS_A=$(awk -v b="backend$A" '$2 == b {print $1}' "$WORK/placement.out" | paste -sd, -)
USERS_B=$(awk -v b="backend$B" '$2 == b {print $1}' "$WORK/placement.out" | paste -sd, -)

# ---------------------------------------------------------------------------
# 5. Failover: kill alice's backend; the LB marks it down in time, the other
#    backend's users stay reachable, alice re-registers on the survivor
# ---------------------------------------------------------------------------
status=0
detail=""
kill -KILL "${BACKEND_PID[$A]}" 2>/dev/null
wait "${BACKEND_PID[$A]}" 2>/dev/null
forget_pid "${BACKEND_PID[$A]}"
killed_at=$(date +%s.%N)
# THRESHOLD missed probes, one per INTERVAL, mark it down. The last miss is
# only known when that probe times out (0.5 s), intervals are jittered by up to
# 10 %, and this poll runs on a shared machine: 2 s of slack covers all three.
limit=$((PROBE_INTERVAL * PROBE_THRESHOLD + 2))
if python3 "$CHECK" wait-health "$LB_ADMIN" "${BACKEND_URI[$A]}" down "$limit"; then
    took=$(seconds_since "$killed_at")
    detail="backend$A down after ${took}s (limit ${limit}s)"
else
    status=1
    detail="the LB still shows backend$A up after ${limit}s"
fi
registers_before=$(count_matching "$WORK/lb.log" "LB REGISTER ")
if ! ua_call "$USERS_B" >"$WORK/call-survivors.out" 2>&1; then
    status=1
    detail="$detail; a call to a backend$B user failed: $(grep -v 'final=200 .*bye=200' "$WORK/call-survivors.out" | head -n 1)"
else
    detail="$detail; $(count_matching "$WORK/call-survivors.out" 'final=200') calls to backend$B users OK"
fi
[ "$(count_matching "$WORK/lb.log" "LB REGISTER ")" = "$registers_before" ] || {
    status=1
    detail="$detail; something re-REGISTERed"
}
ua_register --only alice >"$WORK/reregister-alice.out" 2>&1 || status=1
now_on=$(python3 "$CHECK" lb-dest "$WORK/lb.log" REGISTER alice 2>/dev/null)
if [ "$now_on" != "backend$B" ]; then
    status=1
    detail="$detail; alice re-registered on ${now_on:-nothing}, not backend$B"
elif ! python3 "$CHECK" placement "$WORK/lb.log" "backend$B=${BACKEND_ADMIN[$B]}" alice >/dev/null 2>&1; then
    status=1
    detail="$detail; backend$B holds no binding for alice"
fi
if ua_call alice >"$WORK/call-alice-failover.out" 2>&1 &&
    [ "$(python3 "$CHECK" lb-dest "$WORK/lb.log" INVITE alice)" = "backend$B" ]; then
    detail="$detail; alice re-registered on backend$B and is reachable"
else
    status=1
    detail="$detail; alice not reachable after re-registering: $(cat "$WORK/call-alice-failover.out")"
fi
result 5 "failover: killed backend$A marked down, backend$B users reachable, alice moves" $status "$detail"

# ---------------------------------------------------------------------------
# 6. Durability: the killed backend restarts, restores its bindings from
#    Redis, is marked up, and its users are reachable without re-REGISTER
# ---------------------------------------------------------------------------
status=0
detail=""
# alice and the users hashed to it registered there before the kill.
expected=$(($(printf '%s' "$USERS_A" | tr ',' '\n' | grep -c .) + 1))
start_backend "$A" "$WORK/backend$A-restarted.log"
restored=$(sed -n 's/.*restored \([0-9]*\) contacts from Redis.*/\1/p' "$WORK/backend$A-restarted.log" | head -n 1)
if [ "$restored" != "$expected" ]; then
    status=1
    detail="log says restored '${restored:-nothing}' contacts, expected $expected"
else
    detail="restored $restored contacts from Redis"
fi
if python3 "$CHECK" wait-health "$LB_ADMIN" "${BACKEND_URI[$A]}" up $((PROBE_INTERVAL * 3 + 1)); then
    detail="$detail; LB marks backend$A up"
else
    status=1
    detail="$detail; LB does not mark backend$A up"
fi
registers_before=$(count_matching "$WORK/lb.log" "LB REGISTER ")
invites_before=$(count_matching "$WORK/lb.log" "LB INVITE .* -> ${BACKEND_URI[$A]}")
if ua_call "$USERS_A" >"$WORK/call-restored.out" 2>&1; then
    calls=$(count_matching "$WORK/call-restored.out" 'final=200')
    routed=$(($(count_matching "$WORK/lb.log" "LB INVITE .* -> ${BACKEND_URI[$A]}") - invites_before))
    if [ "$routed" != "$calls" ]; then
        status=1
        detail="$detail; only $routed of $calls calls went to backend$A"
    else
        detail="$detail; $calls calls to its users answered via backend$A"
    fi
else
    status=1
    detail="$detail; a call to a backend$A user failed: $(grep -v 'final=200 .*bye=200' "$WORK/call-restored.out" | head -n 1)"
fi
[ "$(count_matching "$WORK/lb.log" "LB REGISTER ")" = "$registers_before" ] || status=1
result 6 "durability: backend$A restarts, restores from Redis, is marked up, its users reachable" \
    $status "$detail"

# ---------------------------------------------------------------------------
# 7. Drain: SIGTERM a backend with a call ringing; /admin/ready turns 503, a new
#    call gets 503, the ringing call completes, the node exits within drain_secs
# ---------------------------------------------------------------------------
status=0
detail=""
ua_register --only slowpoke >"$WORK/register-slowpoke.out" 2>&1 || status=1
D=$(backend_number "$(python3 "$CHECK" lb-dest "$WORK/lb.log" REGISTER slowpoke 2>/dev/null)")
if [ -z "$D" ] || [ -z "${BACKEND_PID[$D]}" ]; then
    result 7 "drain" 1 "slowpoke did not register: $(cat "$WORK/register-slowpoke.out")"
else
    # Another user of the draining backend, to check that new calls get 503.
    # Sent to the backend itself: a proxy turns a 503 from downstream into 500
    # (RFC 3261 16.7), so through the LB the caller would see 500.
    if [ "$D" = "$A" ]; then OTHER_D="${USERS_A%%,*}"; else OTHER_D="${USERS_B%%,*}"; fi
    ua_call slowpoke >"$WORK/call-slowpoke.out" 2>&1 &
    caller=$!
    PIDS+=("$caller")
    python3 "$CHECK" wait-log "$WORK/ua.log" "RECV INVITE user=slowpoke" 5 || {
        status=1
        detail="the ringing call never reached slowpoke's UA; "
    }
    kill -TERM "${BACKEND_PID[$D]}"
    term_at=$(date +%s.%N)
    if python3 "$CHECK" wait-http "http://${BACKEND_ADMIN[$D]}/admin/ready" 503 1; then
        detail="${detail}/admin/ready 503"
    else
        status=1
        detail="${detail}/admin/ready did not turn 503"
    fi
    if python3 "$UA" call --lb "127.0.0.1:${BACKEND_PORT[$D]}" --domain "$DOMAIN" --user "$OTHER_D" \
        --expect 503 >"$WORK/call-during-drain.out" 2>&1; then
        detail="$detail; new INVITE 503"
    else
        status=1
        detail="$detail; new INVITE got $(sed -n 's/.*final=\([^ ]*\).*/\1/p' "$WORK/call-during-drain.out")"
    fi
    exited=""
    deadline=$(python3 -c "import sys; print(float(sys.argv[1]) + $DRAIN_SECS + 1)" "$term_at")
    while python3 -c "import sys,time; sys.exit(0 if time.time() < float(sys.argv[1]) else 1)" "$deadline"; do
        if ! kill -0 "${BACKEND_PID[$D]}" 2>/dev/null; then
            exited=$(seconds_since "$term_at")
            break
        fi
        sleep 0.1
    done
    if [ -n "$exited" ]; then
        detail="$detail; exited after ${exited}s (drain_secs $DRAIN_SECS)"
    else
        status=1
        detail="$detail; still running ${DRAIN_SECS}s after SIGTERM"
    fi
    wait "$caller"
    caller_status=$?
    if [ "$caller_status" = 0 ]; then
        detail="$detail; the ringing call completed (200, BYE 200)"
    else
        status=1
        detail="$detail; the ringing call did not complete: $(cat "$WORK/call-slowpoke.out")"
    fi
    result 7 "drain: SIGTERM backend$D, ready 503, new calls 503, in-flight call completes, exit in time" \
        $status "$detail"
fi

# ---------------------------------------------------------------------------
# 8. A backend killed under load loses no call: calls go on to the other
#    backend's users, and the dead one's users re-register and are called at
#    once, failing over inside the transaction before the probes notice
# ---------------------------------------------------------------------------
status=0
detail=""
if [ -z "${D:-}" ]; then
    result 8 "a backend killed under load loses no call" 1 "no drained backend to restart"
else
    start_backend "$D" "$WORK/backend$D-after-drain.log"
    python3 "$CHECK" wait-health "$LB_ADMIN" "${BACKEND_URI[$D]}" up $((PROBE_INTERVAL * 3 + 1)) || {
        status=1
        detail="backend$D not marked up after its restart; "
    }
    K=$D         # kept
    X=$((3 - D)) # killed
    if [ "$K" = "$A" ]; then LOAD="$USERS_A"; MOVED="$USERS_B"; else LOAD="$USERS_B,alice"; MOVED="$USERS_A"; fi
    MOVED_FIVE=$(printf '%s' "$MOVED" | tr ',' '\n' | head -n 5 | paste -sd, -)
    failovers_before=$(count_matching "$WORK/lb.log" " failover ")
    ua_call "$LOAD" >"$WORK/call-load.out" 2>&1 &
    load=$!
    PIDS+=("$load")
    sleep 0.3
    kill -KILL "${BACKEND_PID[$X]}" 2>/dev/null
    wait "${BACKEND_PID[$X]}" 2>/dev/null
    forget_pid "${BACKEND_PID[$X]}"
    BACKEND_PID[X]=""
    if ua_register --only "$MOVED_FIVE" >"$WORK/register-moved.out" 2>&1; then
        detail="$detail$(count_matching "$WORK/register-moved.out" " 200$") of backend$X's users re-registered at once"
    else
        status=1
        detail="$detail; re-REGISTER failed: $(grep -v ' 200$' "$WORK/register-moved.out" | head -n 1)"
    fi
    if ua_call "$MOVED_FIVE" >"$WORK/call-moved.out" 2>&1; then
        detail="$detail; $(count_matching "$WORK/call-moved.out" 'final=200') of them called"
    else
        status=1
        detail="$detail; a call to a moved user failed: $(grep -v 'final=200 .*bye=200' "$WORK/call-moved.out" | head -n 1)"
    fi
    wait "$load" || status=1
    answered=$(count_matching "$WORK/call-load.out" 'final=200 .*bye=200')
    expected=$(printf '%s' "$LOAD" | tr ',' '\n' | grep -c .)
    [ "$answered" = "$expected" ] || status=1
    failovers=$(($(count_matching "$WORK/lb.log" " failover ") - failovers_before))
    [ "$failovers" -gt 0 ] || status=1
    result 8 "backend$X killed under load: no call lost, its users fail over to backend$K at once" \
        $status "$detail; $answered of $expected calls of the load answered; $failovers failovers"
    [ "$status" = 0 ] || show_tail "$WORK/lb.log" 20
fi

# ---------------------------------------------------------------------------
finish "$WORK/lb.log"
