#!/usr/bin/env bash
# The cluster demo: two front LBs, three backends, and a Redis primary and
# replica watched by three Sentinels, each on an address of its own in
# 127.0.0.0/8. Four assertions, each printed as PASS or FAIL; the last line is
# `ALL 4 ASSERTIONS PASSED`, or the exit code is 1.
#
#   SIPHON_BIN=target/release/siphon deploy/cluster-demo/validate.sh
#
# Needs only the siphon binary, python3, redis-server, redis-sentinel and
# redis-cli (Debian: redis-server, redis-sentinel, redis-tools). Environment:
#   SIPHON_BIN               the binary (default target/release/siphon)
#   CLUSTER_DEMO_BASE_PORT   first port used (default 62400; it uses
#                            base..base+150, above the kernel's ephemeral range)
#   CLUSTER_DEMO_KEEP        1 keeps the work directory (logs) even on success
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# The HA demo's UA and probes serve here too.
CHECK="$HERE/../ha-demo/check.py"
UA="$HERE/../ha-demo/ua.py"

SIPHON_BIN="${SIPHON_BIN:-target/release/siphon}"
if [ ! -x "$SIPHON_BIN" ] && [ -x "$ROOT/$SIPHON_BIN" ]; then
    SIPHON_BIN="$ROOT/$SIPHON_BIN"
fi

BASE="${CLUSTER_DEMO_BASE_PORT:-62400}"
SIP_PORT=$BASE            # every LB and backend, each on its own address
ADMIN_PORT=$((BASE + 10)) # likewise
REDIS_PORT=$((BASE + 30))
SENTINEL_PORT=$((BASE + 40))
UA_BASE=$((BASE + 100))
LB_ADDR=([1]=127.0.0.11 [2]=127.0.0.12)
BACKEND_ADDR=([1]=127.0.0.21 [2]=127.0.0.22 [3]=127.0.0.23)
PRIMARY=127.0.0.31
REPLICA=127.0.0.32
SENTINELS=(127.0.0.41 127.0.0.42 127.0.0.43)
DOMAIN="example.com"
KEY_PREFIX="siphon:reg:" # registrar.redis.key_prefix (the default)

# user01..user45: 30 registered at the start, 15 more during the failover.
ALL_USERS=$(seq -f 'user%02g' 1 45 | paste -sd, -)
FIRST_30=$(seq -f 'user%02g' 1 30 | paste -sd, -)
DURING_FAILOVER=$(seq -f 'user%02g' 31 40 | paste -sd, -)
AFTER_FAILOVER=$(seq -f 'user%02g' 41 45 | paste -sd, -)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/siphon-cluster-demo.XXXXXX")"
BACKEND_PID=([1]="" [2]="" [3]="")
PRIMARY_PID=""
TOTAL=4
KEEP="${CLUSTER_DEMO_KEEP:-0}"
# shellcheck source=../demo-lib.sh
. "$HERE/../demo-lib.sh"

# ---------------------------------------------------------------------------
# Starting the pieces
# ---------------------------------------------------------------------------

# redis_cli HOST PORT ARGS...: one command, its raw answer.
redis_cli() {
    local host=$1 port=$2
    shift 2
    redis-cli -h "$host" -p "$port" --raw "$@" 2>/dev/null
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds, polling every 0.1 s.
wait_for() {
    local deadline
    deadline=$(($(date +%s%N) + ${1%.*} * 1000000000))
    shift
    until "$@"; do
        [ "$(date +%s%N)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

answers_ping() { [ "$(redis_cli "$1" "$2" PING)" = PONG ]; }

# start_redis NAME ADDRESS [--replicaof HOST PORT]: no persistence; the
# replica announces its own address, so the Sentinels find it there.
start_redis() {
    local name=$1 address=$2
    shift 2
    mkdir -p "$WORK/$name"
    redis-server --port "$REDIS_PORT" --bind "$address" --save "" --appendonly no \
        --replica-announce-ip "$address" --dir "$WORK/$name" --logfile "$WORK/$name.log" \
        --daemonize no "$@" &
    PIDS+=($!)
    LAST_PID=$!
    wait_for 10 answers_ping "$address" "$REDIS_PORT" || {
        show_tail "$WORK/$name.log"
        fail_now "$name did not answer PING on $address:$REDIS_PORT"
    }
}

start_sentinel() {
    local address=$1 conf="$WORK/sentinel-$1.conf"
    cat >"$conf" <<EOF
port $SENTINEL_PORT
bind $address
protected-mode no
sentinel announce-ip $address
dir $WORK
logfile $WORK/sentinel-$address.log
sentinel monitor siphon $PRIMARY $REDIS_PORT 2
sentinel down-after-milliseconds siphon 1000
sentinel failover-timeout siphon 5000
sentinel parallel-syncs siphon 1
EOF
    redis-sentinel "$conf" &
    PIDS+=($!)
    wait_for 10 answers_ping "$address" "$SENTINEL_PORT" || {
        show_tail "$WORK/sentinel-$address.log"
        fail_now "the Sentinel on $address did not answer PING"
    }
}

# Every Sentinel knows the replica and the two other Sentinels: only then
# can they agree on a failover.
sentinels_agree() {
    local sentinel
    for sentinel in "${SENTINELS[@]}"; do
        redis_cli "$sentinel" "$SENTINEL_PORT" SENTINEL CKQUORUM siphon | grep -q "OK 3 usable" || return 1
        redis_cli "$sentinel" "$SENTINEL_PORT" SENTINEL REPLICAS siphon | grep -qx "$REPLICA" || return 1
    done
}

# The primary the first Sentinel that answers names now.
current_primary() {
    local sentinel
    for sentinel in "${SENTINELS[@]}"; do
        if redis_cli "$sentinel" "$SENTINEL_PORT" SENTINEL GET-MASTER-ADDR-BY-NAME siphon | head -n 1; then
            return 0
        fi
    done
}

primary_is() { [ "$(current_primary)" = "$1" ]; }

start_backend() {
    local n=$1 logfile=$2
    env -u RUST_LOG NO_COLOR=1 SIPHON_INSTANCE="backend$n" BACKEND_ADDR="${BACKEND_ADDR[$n]}" \
        BACKEND_NAME="backend$n.example.com" SIP_PORT="$SIP_PORT" ADMIN_PORT="$ADMIN_PORT" \
        SENTINEL_PORT="$SENTINEL_PORT" \
        "$SIPHON_BIN" --config "$HERE/siphon-backend.yaml" >"$logfile" 2>&1 &
    BACKEND_PID[n]=$!
    PIDS+=($!)
    wait_ready "$logfile" "${BACKEND_PID[$n]}" "backend$n"
}

start_lb() {
    local n=$1
    env -u RUST_LOG NO_COLOR=1 SIPHON_INSTANCE="lb$n" LB_ADDR="${LB_ADDR[$n]}" \
        SIP_PORT="$SIP_PORT" ADMIN_PORT="$ADMIN_PORT" SENTINEL_PORT="$SENTINEL_PORT" \
        "$SIPHON_BIN" --config "$HERE/siphon-lb.yaml" >"$WORK/lb$n.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$WORK/lb$n.log" "$!" "lb$n"
}

start_ua() {
    python3 "$UA" serve --users "$ALL_USERS" --base-port "$UA_BASE" >"$WORK/ua.log" 2>&1 &
    PIDS+=($!)
    python3 "$CHECK" wait-log "$WORK/ua.log" "^READY" 5 || {
        show_tail "$WORK/ua.log"
        fail_now "the callee UA did not start"
    }
}

# ua_register LB_N USERS: REGISTER USERS through LB N (contacts on the UA).
ua_register() {
    python3 "$UA" register --lb "${LB_ADDR[$1]}:$SIP_PORT" --domain "$DOMAIN" \
        --users "$ALL_USERS" --base-port "$UA_BASE" --only "$2"
}

# ua_call LB_N USERS: call each of USERS through LB N.
ua_call() {
    python3 "$UA" call --lb "${LB_ADDR[$1]}:$SIP_PORT" --domain "$DOMAIN" --user "$2"
}

# registers: REGISTERs the two LBs have relayed so far.
registers() {
    echo $(($(count_matching "$WORK/lb1.log" "LB REGISTER ") + $(count_matching "$WORK/lb2.log" "LB REGISTER ")))
}

# users_on BACKEND_NAME: the users whose REGISTER LB 1 sent there.
users_on() {
    local user
    for user in ${FIRST_30//,/ }; do
        [ "$(python3 "$CHECK" lb-dest "$WORK/lb1.log" REGISTER "$user" 2>/dev/null)" = "$1" ] && echo "$user"
    done | paste -sd, -
}

# failed_calls FILE: the call lines of FILE that did not end 200 + BYE 200.
failed_calls() { grep -v 'final=200 .*bye=200' "$1" | head -n 3; }

# ---------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------

[ -x "$SIPHON_BIN" ] || fail_now "SIPHON_BIN=$SIPHON_BIN is not an executable (build it: cargo build --release)"
for tool in python3 redis-server redis-sentinel redis-cli; do
    command -v "$tool" >/dev/null || fail_now "$tool not found (apt-get install redis-server redis-sentinel redis-tools)"
done
PORTS=""
for address in "${LB_ADDR[@]}" "${BACKEND_ADDR[@]}"; do PORTS="$PORTS $address:$SIP_PORT $address:$ADMIN_PORT"; done
for address in "${SENTINELS[@]}"; do PORTS="$PORTS $address:$SENTINEL_PORT"; done
PORTS="$PORTS $PRIMARY:$REDIS_PORT $REPLICA:$REDIS_PORT"
for i in $(seq 0 44); do PORTS="$PORTS $((UA_BASE + i))"; done
# shellcheck disable=SC2086
python3 "$CHECK" free-ports $PORTS || fail_now "pick other ports with CLUSTER_DEMO_BASE_PORT"

log "siphon cluster demo: LBs ${LB_ADDR[*]}, backends ${BACKEND_ADDR[*]}, port $SIP_PORT;"
log "redis primary $PRIMARY and replica $REPLICA (:$REDIS_PORT), sentinels ${SENTINELS[*]} (:$SENTINEL_PORT)"
log "binary $SIPHON_BIN, logs in $WORK"
start_redis primary "$PRIMARY"
PRIMARY_PID=$LAST_PID
start_redis replica "$REPLICA" --replicaof "$PRIMARY" "$REDIS_PORT"
for sentinel in "${SENTINELS[@]}"; do start_sentinel "$sentinel"; done
wait_for 15 sentinels_agree || fail_now "the Sentinels do not all see the replica and each other"
for n in 1 2 3; do start_backend "$n" "$WORK/backend$n.log"; done
start_ua
start_lb 1
start_lb 2

# ---------------------------------------------------------------------------
# 1. Users registered through LB 1 are called through LB 2 and reached
# ---------------------------------------------------------------------------
status=0
ua_register 1 "$FIRST_30" >"$WORK/register-30.out" 2>&1 || status=1
registered=$(count_matching "$WORK/register-30.out" " 200$")
ua_call 2 "$FIRST_30" >"$WORK/call-30.out" 2>&1 || status=1
answered=$(count_matching "$WORK/call-30.out" 'final=200 .*bye=200')
reached=0
same_backend=0
for user in ${FIRST_30//,/ }; do
    grep -q "RECV INVITE user=$user " "$WORK/ua.log" && reached=$((reached + 1))
    registered_on=$(python3 "$CHECK" lb-dest "$WORK/lb1.log" REGISTER "$user" 2>/dev/null)
    called_on=$(python3 "$CHECK" lb-dest "$WORK/lb2.log" INVITE "$user" 2>/dev/null)
    [ -n "$registered_on" ] && [ "$registered_on" = "$called_on" ] && same_backend=$((same_backend + 1))
done
spread=""
for n in 1 2 3; do
    held=$(users_on "backend$n" | tr ',' '\n' | grep -c .)
    [ "$held" -gt 0 ] || status=1
    spread="$spread backend$n:$held"
done
[ "$registered" = 30 ] && [ "$answered" = 30 ] && [ "$reached" = 30 ] && [ "$same_backend" = 30 ] || status=1
result 1 "30 users registered through lb1 are called through lb2 and reached" $status \
    "$registered x 200 on lb1; $answered calls answered via lb2; $reached reached the UA; \
$same_backend routed by lb2 to the backend lb1 registered them on;$spread"
[ "$status" = 0 ] || { failed_calls "$WORK/call-30.out"; show_tail "$WORK/lb2.log"; }

# ---------------------------------------------------------------------------
# 2. A backend killed under load: the calls on the others go on, its
#    subscribers are reached through the others (their lookup reads Redis)
#    at once, failing over inside the transaction; no re-REGISTER
#
#    The load runs on the other backends' users. A call already ringing
#    through the killed backend is tied to it (the callee answers to its Via),
#    so no proxy can save it; its users are called right after the kill.
# ---------------------------------------------------------------------------
status=0
detail=""
X=$(python3 "$CHECK" lb-dest "$WORK/lb1.log" REGISTER user01 2>/dev/null)
X=${X#backend}
[ -n "$X" ] || fail_now "cannot tell user01's backend"
USERS_X=$(users_on "backend$X")
USERS_KEPT=$(printf '%s' "$FIRST_30" | tr ',' '\n' | grep -vxF -f <(printf '%s' "$USERS_X" | tr ',' '\n') | paste -sd, -)
registers_before=$(registers)
failovers_before=$(count_matching "$WORK/lb2.log" " failover ")
# The load: the others' users called through lb2, pass after pass.
LOAD_PASSES=10
(
    failed=0
    for _ in $(seq 1 "$LOAD_PASSES"); do ua_call 2 "$USERS_KEPT" || failed=1; done
    exit $failed
) >"$WORK/call-load.out" 2>&1 &
load=$!
PIDS+=("$load")
# Kill once the load is flowing.
wait_for 10 grep -q 'final=200' "$WORK/call-load.out" || fail_now "the load got no call answered"
kill -KILL "${BACKEND_PID[$X]}" 2>/dev/null
wait "${BACKEND_PID[$X]}" 2>/dev/null
forget_pid "${BACKEND_PID[$X]}"
# Before the probes notice: each call tries the dead backend, then another.
ua_call 2 "$USERS_X" >"$WORK/call-failover.out" 2>&1 || { status=1; detail="$(failed_calls "$WORK/call-failover.out"); "; }
failed_over=$(count_matching "$WORK/call-failover.out" 'final=200 .*bye=200')
wait "$load" || status=1
forget_pid "$load"
answered=$(count_matching "$WORK/call-load.out" 'final=200 .*bye=200')
load_calls=$(($(printf '%s' "$USERS_KEPT" | tr ',' '\n' | grep -c .) * LOAD_PASSES))
[ "$answered" = "$load_calls" ] || { status=1; detail="${detail}lost: $(failed_calls "$WORK/call-load.out"); "; }
failovers=$(($(count_matching "$WORK/lb2.log" " failover ") - failovers_before))
[ "$failovers" -gt 0 ] || status=1
# Once both LBs' probes call it down, its users go straight to the others.
for lb in 1 2; do
    python3 "$CHECK" wait-health "${LB_ADDR[$lb]}:$ADMIN_PORT" "sip:backend$X.example.com" down 5 || status=1
done
ua_call 1 "$USERS_X" >"$WORK/call-moved.out" 2>&1 || { status=1; detail="$detail$(failed_calls "$WORK/call-moved.out"); "; }
moved=$(count_matching "$WORK/call-moved.out" 'final=200 .*bye=200')
elsewhere=0
for user in ${USERS_X//,/ }; do
    now_on=$(python3 "$CHECK" lb-dest "$WORK/lb1.log" INVITE "$user" 2>/dev/null)
    [ -n "$now_on" ] && [ "$now_on" != "backend$X" ] && elsewhere=$((elsewhere + 1))
done
[ "$elsewhere" = "$(printf '%s' "$USERS_X" | tr ',' '\n' | grep -c .)" ] || status=1
[ "$(registers)" = "$registers_before" ] || { status=1; detail="${detail}something re-REGISTERed; "; }
result 2 "backend$X killed under load: no call lost, its users reached through the others from Redis" \
    $status "${detail}$answered of $load_calls calls of the load answered; $failed_over calls to backend$X's users \
($USERS_X) right after the kill answered, $failovers failovers on lb2; then $moved answered by $elsewhere other \
backends; no re-REGISTER"
[ "$status" = 0 ] || show_tail "$WORK/lb2.log" 20

# Back for what follows: it restores its bindings from Redis.
start_backend "$X" "$WORK/backend$X-restarted.log"
for lb in 1 2; do
    python3 "$CHECK" wait-health "${LB_ADDR[$lb]}:$ADMIN_PORT" "sip:backend$X.example.com" up 5 ||
        fail_now "lb$lb does not mark the restarted backend$X up"
done

# ---------------------------------------------------------------------------
# 3. The Redis primary killed: Sentinel promotes the replica, registrations
#    and calls go on, and every acknowledged binding is in Redis afterwards
# ---------------------------------------------------------------------------
status=0
detail=""
kill -KILL "$PRIMARY_PID" 2>/dev/null
wait "$PRIMARY_PID" 2>/dev/null
forget_pid "$PRIMARY_PID"
killed_at=$(date +%s.%N)
ua_register 1 "$DURING_FAILOVER" >"$WORK/register-during.out" 2>&1 || status=1
ua_call 2 "user02,user03,user04,user05,user06" >"$WORK/call-during.out" 2>&1 || status=1
during="$(count_matching "$WORK/register-during.out" " 200$") REGISTERs and \
$(count_matching "$WORK/call-during.out" 'final=200 .*bye=200') calls answered while the primary was gone"
if wait_for 20 primary_is "$REPLICA"; then
    detail="$during; $REPLICA promoted after $(seconds_since "$killed_at")s"
else
    status=1
    detail="$during; the Sentinels did not promote $REPLICA (they name $(current_primary))"
fi
ua_register 2 "$AFTER_FAILOVER" >"$WORK/register-after.out" 2>&1 || status=1
ua_call 1 "$AFTER_FAILOVER" >"$WORK/call-after.out" 2>&1 || status=1
detail="$detail; $(count_matching "$WORK/register-after.out" " 200$") REGISTERs and \
$(count_matching "$WORK/call-after.out" 'final=200 .*bye=200') calls answered after"
acknowledged=$(cat "$WORK"/register-*.out | awk '$1 == "REGISTER" && $3 == "200" {print $2}' | sort -u)
# stored USER: the new primary holds a binding of USER with its UA's contact.
stored() {
    local user=$1 index
    index=$((10#${user#user} - 1))
    redis_cli "$REPLICA" "$REDIS_PORT" HGETALL "$KEY_PREFIX{sip:$user@$DOMAIN}" |
        grep -q "sip:$user@127.0.0.1:$((UA_BASE + index))"
}
all_stored() {
    local user
    for user in $acknowledged; do stored "$user" || return 1; done
}
wait_for 10 all_stored || status=1
missing=""
for user in $acknowledged; do stored "$user" || missing="$missing $user"; done
count=$(printf '%s\n' "$acknowledged" | grep -c .)
[ "$count" = 45 ] || status=1
detail="$detail; the new primary holds $((count - $(printf '%s' "$missing" | wc -w))) of $count acknowledged bindings${missing:+ (missing:$missing)}"
result 3 "Redis primary killed: the replica is promoted, registrations and calls go on, no acknowledged binding lost" \
    $status "$detail"

# ---------------------------------------------------------------------------
# 4. Shared health: a backend marked down on LB 1 is avoided by LB 2
#    within 1 s, and comes back on LB 2 when LB 1 lifts the mark
# ---------------------------------------------------------------------------
status=0
detail=""
# lb2 lost its subscription with the old primary; it hears lb1 again once
# it has subscribed on the new one.
python3 "$CHECK" wait-log "$WORK/lb2.log" "share_health: subscribed again" 10 || {
    status=1
    detail="lb2 did not subscribe again after the failover; "
}
Y=$(python3 "$CHECK" lb-dest "$WORK/lb1.log" REGISTER user02 2>/dev/null)
Y=${Y#backend}
USERS_Y=$(users_on "backend$Y")
uri="sip:backend$Y.example.com"
python3 "$CHECK" http POST "http://${LB_ADDR[1]}:$ADMIN_PORT/admin/gateways/backends/down" \
    "{\"uri\": \"$uri\"}" >"$WORK/mark-down.out" 2>&1 || status=1
marked_at=$(date +%s.%N)
if python3 "$CHECK" wait-health "${LB_ADDR[2]}:$ADMIN_PORT" "$uri" down 1; then
    detail="${detail}lb2 shows backend$Y down $(seconds_since "$marked_at")s after lb1's mark"
else
    status=1
    detail="${detail}lb2 still shows backend$Y up 1 s after lb1's mark"
fi
grep -q "uri=$uri .*node=lb1 peer_source=admin" "$WORK/lb2.log" || {
    status=1
    detail="$detail; lb2's log does not name lb1"
}
ua_call 2 "$USERS_Y" >"$WORK/call-avoided.out" 2>&1 || status=1
avoided=0
for user in ${USERS_Y//,/ }; do
    now_on=$(python3 "$CHECK" lb-dest "$WORK/lb2.log" INVITE "$user" 2>/dev/null)
    [ -n "$now_on" ] && [ "$now_on" != "backend$Y" ] && avoided=$((avoided + 1))
done
[ "$avoided" = "$(printf '%s' "$USERS_Y" | tr ',' '\n' | grep -c .)" ] || status=1
detail="$detail; $(count_matching "$WORK/call-avoided.out" 'final=200 .*bye=200') calls to its users \
through lb2 answered, $avoided sent elsewhere"
python3 "$CHECK" http POST "http://${LB_ADDR[1]}:$ADMIN_PORT/admin/gateways/backends/up" \
    "{\"uri\": \"$uri\"}" >"$WORK/mark-up.out" 2>&1 || status=1
if python3 "$CHECK" wait-health "${LB_ADDR[2]}:$ADMIN_PORT" "$uri" up 1; then
    detail="$detail; back up on lb2 when lb1 lifts the mark"
else
    status=1
    detail="$detail; lb2 does not follow lb1's mark up"
fi
result 4 "shared health: backend$Y marked down on lb1 is avoided by lb2 within 1 s" $status "$detail"

# ---------------------------------------------------------------------------
finish "$WORK/lb2.log"
