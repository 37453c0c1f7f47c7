#!/usr/bin/env bash
# bench/run.sh: sipp load through a SIP load balancer, optionally side by side
# with Kamailio's dispatcher.
#
# Topology (UDP, 127.0.0.1 only):
#   sipp UAC ──▶ LB 127.0.0.1:5060 ──▶ sipp UAS 127.0.0.1:5071 and :5072
#
# The LB is siphon running scripts/lb.py (hash on the To URI, Record-Route,
# OPTIONS probing), or with --vs kamailio also Kamailio's dispatcher with the
# equivalent bench/kamailio/kamailio.cfg. The two alternate step by step in one
# run, so machine noise hits both. Every step starts a fresh LB and fresh
# backends, measures, then stops them all by PID.
#
# Modes (comma-separated with --mode; default: all of them):
#   fixed           full calls at --rate for --duration s, --reps times
#   ramp            full calls, the rate rising by --ramp-step from --ramp-start;
#                   each LB stops at its first step with a failed call, a
#                   retransmission, or less than 90% of the asked rate
#   register-fixed  like fixed, with REGISTER transactions instead of calls
#   register-ramp   like ramp, with REGISTER transactions
#   register        both register modes; all = every mode
#
# Figures per step: calls ok / failed, retransmissions (sent and received by the
# UAC), achieved calls/s, LB CPU % and CPU seconds per 1000 calls (utime+stime
# from /proc/PID/stat of every LB process, all threads, over the traffic
# window), the LB's peak memory, and the CPU % of the sipp processes.
#
# Run bench/run.sh --help for the options.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

# ---------------------------------------------------------------- options --
ORIG_ARGS="$*"
MODES="all"
LBS="siphon"
RATE=1000
DURATION=20
REPS=3
RAMP_START=500
RAMP_STEP=500
RAMP_MAX=20000
RAMP_STEPS=0            # 0: no limit on the number of ramp steps
STEP_DURATION=10
USERS=5000
KAM_CHILDREN=2
KAM_SHM_MB=1024         # tm keeps every transaction for its timers: 256 MiB runs out near 2000 calls/s
SIPHON_BIN="$REPO_DIR/target/release/siphon"
SIPHON_SCRIPT="$REPO_DIR/scripts/lb.py"
OUT=""
LB_ADDR="127.0.0.1"
LB_PORT=5060
BACKEND_PORTS=(5071 5072)
SOCKET_BUFFER=4194304   # sipp's SO_RCVBUF/SO_SNDBUF: 4 MiB, as DESIGN.md §6 advises

usage() {
    cat <<EOF
usage: bench/run.sh [options]

  --vs kamailio         also run Kamailio's dispatcher, alternating with siphon
  --only kamailio       run Kamailio alone (checks the harness without siphon)
  --mode LIST           fixed,ramp,register-fixed,register-ramp | register | all
                        (default: all)
  --rate N              calls/s for the fixed modes (default $RATE)
  --duration S          seconds per fixed run (default $DURATION)
  --reps N              repetitions of each fixed run (default $REPS)
  --ramp-start N        first ramp rate (default $RAMP_START)
  --ramp-step N         ramp increment (default $RAMP_STEP)
  --ramp-max N          highest ramp rate tried (default $RAMP_MAX)
  --ramp-steps N        at most N ramp steps (default: unlimited)
  --step-duration S     seconds per ramp step (default $STEP_DURATION)
  --users N             distinct To users in the CSV (default $USERS, at least 1000)
  --kamailio-children N Kamailio UDP worker processes (default $KAM_CHILDREN)
  --kamailio-shm MB     Kamailio shared memory pool (default $KAM_SHM_MB)
  --siphon BIN          siphon binary (default target/release/siphon, built if missing)
  --siphon-script PY    routing script for siphon (default scripts/lb.py)
  --out FILE            results file (default bench/results/<timestamp>.md)
  -h, --help            this text
EOF
}

die() { echo "bench: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --vs)
            [ "${2:-}" = kamailio ] || die "--vs takes 'kamailio'"
            LBS="siphon,kamailio"; shift 2 ;;
        --only)
            [ "${2:-}" = kamailio ] || [ "${2:-}" = siphon ] || die "--only takes 'kamailio' or 'siphon'"
            LBS="$2"; shift 2 ;;
        --mode) MODES="${2:?}"; shift 2 ;;
        --rate) RATE="${2:?}"; shift 2 ;;
        --duration) DURATION="${2:?}"; shift 2 ;;
        --reps) REPS="${2:?}"; shift 2 ;;
        --ramp-start) RAMP_START="${2:?}"; shift 2 ;;
        --ramp-step) RAMP_STEP="${2:?}"; shift 2 ;;
        --ramp-max) RAMP_MAX="${2:?}"; shift 2 ;;
        --ramp-steps) RAMP_STEPS="${2:?}"; shift 2 ;;
        --step-duration) STEP_DURATION="${2:?}"; shift 2 ;;
        --users) USERS="${2:?}"; shift 2 ;;
        --kamailio-children) KAM_CHILDREN="${2:?}"; shift 2 ;;
        --kamailio-shm) KAM_SHM_MB="${2:?}"; shift 2 ;;
        --siphon) SIPHON_BIN="${2:?}"; shift 2 ;;
        --siphon-script) SIPHON_SCRIPT="${2:?}"; shift 2 ;;
        --out) OUT="${2:?}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
for pair in "rate:$RATE" "duration:$DURATION" "reps:$REPS" "ramp-start:$RAMP_START" \
            "ramp-step:$RAMP_STEP" "ramp-max:$RAMP_MAX" "step-duration:$STEP_DURATION" \
            "users:$USERS" "kamailio-children:$KAM_CHILDREN" "kamailio-shm:$KAM_SHM_MB"; do
    is_count "${pair#*:}" || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$RAMP_STEPS" =~ ^[0-9]+$ ]] || die "--ramp-steps must be an integer"
[ "$USERS" -ge 1000 ] || die "--users must be at least 1000 (the issue asks for >= 1000 distinct To users)"

case "$MODES" in
    all) MODES="fixed,ramp,register-fixed,register-ramp" ;;
    register) MODES="register-fixed,register-ramp" ;;
esac
IFS=, read -r -a MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
    case "$mode" in
        fixed|ramp|register-fixed|register-ramp) ;;
        *) die "unknown mode '$mode' (fixed, ramp, register-fixed, register-ramp, register, all)" ;;
    esac
done
IFS=, read -r -a LB_LIST <<<"$LBS"

# ---------------------------------------------------------- process control --
# Every process this script starts is recorded here and stopped on exit.
declare -A STARTED=()

track() { STARTED[$1]=1; }

# stop_pid PID [grace seconds]: TERM, wait, then KILL. Only our own PIDs.
stop_pid() {
    local pid=$1 grace=${2:-5} waited=0
    [ -n "${STARTED[$pid]:-}" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((grace * 10)) ]; do
            sleep 0.1; waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "STARTED[$pid]"
}

cleanup() {
    local pid
    for pid in "${!STARTED[@]}"; do
        stop_pid "$pid" 2
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- /proc reads --
CLK_TCK=$(getconf CLK_TCK)

# The PIDs that make up an LB: the process and its direct children
# (Kamailio forks its workers; siphon is one process with threads).
lb_pids() {
    local main=$1
    echo "$main"
    pgrep -P "$main" 2>/dev/null || true
}

# cpu_ticks PID...: utime+stime of each process (all its threads), summed.
# The command name in field 2 may hold spaces, so fields are counted after ')'.
cpu_ticks() {
    local pid total=0 rest
    for pid in "$@"; do
        rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        # After ')': field 1 is state, so utime (stat field 14) is word 12.
        total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
    done
    echo "$total"
}

# pss_kib PID...: proportional set size summed over the processes, in KiB.
# Pss splits shared pages (Kamailio's shared memory) between the processes,
# so the sum is the LB's real footprint; for one process it is ~RSS.
pss_kib() {
    local pid total=0 kib
    for pid in "$@"; do
        kib=$(awk '/^Pss:/ {print $2; exit}' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# hwm_kib PID...: peak RSS (VmHWM) of the largest process, in KiB.
hwm_kib() {
    local pid best=0 kib
    for pid in "$@"; do
        kib=$(awk '/^VmHWM:/ {print $2; exit}' "/proc/$pid/status" 2>/dev/null) || continue
        [ "${kib:-0}" -gt "$best" ] && best=$kib
    done
    echo "$best"
}

now_ms() { date +%s%3N; }

# udp_rcvbuf_errors: datagrams the kernel dropped for a full receive buffer,
# machine-wide (/proc/net/snmp, Udp: RcvbufErrors).
udp_rcvbuf_errors() {
    awk '$1 == "Udp:" { if (!n) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; n = 1 } else { print $c + 0; exit } }' /proc/net/snmp
}

port_busy() { [ -n "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]; }

# wait_port_free PORT: another test on this machine may hold the port for a while.
wait_port_free() {
    local port=$1 tries=0
    while port_busy "$port"; do
        tries=$((tries + 1))
        [ "$tries" -le 60 ] || die "UDP port $port stays busy (ss -lunp 'sport = :$port'); free it and rerun"
        sleep 0.5
    done
}

wait_port_bound() {
    local port=$1 pid=$2 tries=0
    until port_busy "$port"; do
        kill -0 "$pid" 2>/dev/null || return 1
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || return 1
        sleep 0.1
    done
}

# ------------------------------------------------------------------ set-up --
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/siphon-bench.$STAMP.XXXX")
[ -n "$OUT" ] || OUT="$BENCH_DIR/results/$STAMP.md"
mkdir -p "$(dirname "$OUT")"
ROWS="$RUN_DIR/rows.tsv"
: >"$ROWS"
NOTES=()

command -v sipp >/dev/null || die "sipp is missing (apt-get install -y sip-tester)"
command -v ss >/dev/null || die "ss is missing (apt-get install -y iproute2)"

needs_lb() { local lb; for lb in "${LB_LIST[@]}"; do [ "$lb" = "$1" ] && return 0; done; return 1; }

if needs_lb kamailio && ! command -v kamailio >/dev/null; then
    [ "$(id -u)" = 0 ] || die "kamailio is missing; run: sudo apt-get install -y kamailio"
    echo "bench: installing kamailio from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y kamailio >"$RUN_DIR/apt.log" 2>&1 \
        || die "apt-get install kamailio failed, see $RUN_DIR/apt.log"
fi
KAM_MODULES=/usr/lib/x86_64-linux-gnu/kamailio/modules
if needs_lb kamailio; then
    [ -d "$KAM_MODULES" ] || KAM_MODULES=$(dirname "$(find /usr/lib -name dispatcher.so -path '*kamailio*' | head -1)")
    [ -f "$KAM_MODULES/dispatcher.so" ] || die "Kamailio's dispatcher.so not found"
fi

if needs_lb siphon; then
    if [ ! -x "$SIPHON_BIN" ]; then
        [ "$SIPHON_BIN" = "$REPO_DIR/target/release/siphon" ] || die "$SIPHON_BIN is not executable"
        echo "bench: building target/release/siphon" >&2
        PYO3_PYTHON=$(command -v python3) || die "python3 is missing"
        export PYO3_PYTHON
        (cd "$REPO_DIR" && cargo build --release) >&2
    fi
    [ -f "$SIPHON_SCRIPT" ] || die "siphon script $SIPHON_SCRIPT not found"
fi

# Bigger socket buffers only help; the kernel caps them at rmem_max.
RMEM_MAX=$(sysctl -n net.core.rmem_max 2>/dev/null || echo 0)
if [ "$RMEM_MAX" -lt "$SOCKET_BUFFER" ] && [ "$(id -u)" = 0 ]; then
    if sysctl -qw net.core.rmem_max="$SOCKET_BUFFER" net.core.wmem_max="$SOCKET_BUFFER" 2>/dev/null; then
        NOTES+=("raised net.core.rmem_max/wmem_max from $RMEM_MAX to $SOCKET_BUFFER (running as root)")
    fi
fi

# The To users: a sequential CSV, so consecutive calls hash to either backend.
USERS_CSV="$RUN_DIR/users.csv"
{
    echo SEQUENTIAL
    seq -f "user%05g;" 1 "$USERS"
} >"$USERS_CSV"

# siphon's config: config/lb.yaml's load balancer, UDP only, quiet logs.
SIPHON_CONFIG="$RUN_DIR/siphon.yaml"
cat >"$SIPHON_CONFIG" <<EOF
# Written by bench/run.sh: the load balancer of config/lb.yaml, UDP only.
listen:
  udp: ["$LB_ADDR:$LB_PORT"]
  tcp: []
script:
  path: "$SIPHON_SCRIPT"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 5, failure_threshold: 3}
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:${BACKEND_PORTS[0]}"
        - uri: "sip:backend2.example.com:5060"
          address: "127.0.0.1:${BACKEND_PORTS[1]}"
server: {instance_id: "bench", drain_secs: 0}
log: {level: warn}
EOF

# Kamailio's config: ours, with this run's paths filled in.
KAM_CONFIG="$RUN_DIR/kamailio.cfg"
KAM_LIST="$RUN_DIR/dispatcher.list"
if needs_lb kamailio; then
    cat >"$KAM_LIST" <<EOF
# setid destination flags priority
1 sip:127.0.0.1:${BACKEND_PORTS[0]} 0 0
1 sip:127.0.0.1:${BACKEND_PORTS[1]} 0 0
EOF
    sed -e "s#@DISPATCHER_LIST@#$KAM_LIST#" -e "s#@LISTEN@#$LB_ADDR:$LB_PORT#" \
        -e "s#@CHILDREN@#$KAM_CHILDREN#" -e "s#^mpath=.*#mpath=\"$KAM_MODULES/\"#" \
        "$BENCH_DIR/kamailio/kamailio.cfg" >"$KAM_CONFIG"
    kamailio -c -f "$KAM_CONFIG" >"$RUN_DIR/kamailio-check.log" 2>&1 \
        || die "kamailio rejects $KAM_CONFIG, see $RUN_DIR/kamailio-check.log"
fi
if needs_lb siphon; then
    "$SIPHON_BIN" --check --config "$SIPHON_CONFIG" >"$RUN_DIR/siphon-check.log" 2>&1 \
        || die "siphon --check fails on $SIPHON_CONFIG: $(tail -3 "$RUN_DIR/siphon-check.log")"
fi

# ------------------------------------------------------------------- steps --
# start_lb NAME LOG: starts the LB, sets STARTED_PID, returns 1 if it never binds.
# (No $(...) around these: the processes must stay children of this shell.)
start_lb() {
    local lb=$1 log=$2 pid
    wait_port_free "$LB_PORT"
    case "$lb" in
        siphon)
            "$SIPHON_BIN" --config "$SIPHON_CONFIG" >"$log" 2>&1 &
            pid=$! ;;
        kamailio)
            mkdir -p "$RUN_DIR/kamailio-run"
            # -DD: stay in the foreground (so $! is the main process) but fork workers.
            kamailio -f "$KAM_CONFIG" -DD -E -m "$KAM_SHM_MB" -M 16 \
                -Y "$RUN_DIR/kamailio-run" >"$log" 2>&1 &
            pid=$! ;;
    esac
    track "$pid"
    STARTED_PID=$pid
    wait_port_bound "$LB_PORT" "$pid"
}

# start_uas PORT SCENARIO SECONDS LOG: a backend; sets STARTED_PID (the
# timeout wrapper, which passes a TERM on to sipp) and UAS_SIPP_PID (sipp).
# -aa answers the LB's OPTIONS probes with 200. Each probe is a new Call-ID
# that the scenario leaves paused, and sipp's own -timeout waits for paused
# calls, hence the timeout wrapper.
start_uas() {
    local port=$1 scenario=$2 seconds=$3 log=$4 pid tries=0
    wait_port_free "$port"
    timeout -k 2 "$seconds" sipp -sf "$scenario" -aa -i 127.0.0.1 -p "$port" -nostdin \
        -buff_size "$SOCKET_BUFFER" -trace_err -error_file "${log%.log}-errors.log" \
        >"$log" 2>&1 </dev/null &
    pid=$!
    track "$pid"
    STARTED_PID=$pid
    UAS_SIPP_PID=""
    while [ -z "$UAS_SIPP_PID" ] && [ "$tries" -lt 50 ]; do
        UAS_SIPP_PID=$(pgrep -P "$pid" | head -1) || true
        tries=$((tries + 1))
        [ -n "$UAS_SIPP_PID" ] || sleep 0.1
    done
    [ -n "$UAS_SIPP_PID" ] || return 1
    track "$UAS_SIPP_PID"
    wait_port_bound "$port" "$pid"
}

# sipp_stat STATFILE COLUMN: the last value of a column of sipp's -trace_stat CSV.
sipp_stat() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $c }
        END { print (c && last != "") ? last : "" }' "$1"
}

# elapsed_seconds "HH:MM:SS:uuuuuu" (sipp's ElapsedTime format).
elapsed_seconds() {
    awk -F: '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 + $4 / 1e6 }' <<<"$1"
}

# screen_totals SCREENFILE: "retrans timeouts unexpected" summed over the
# message lines of the last scenario screen sipp dumped on exit.
screen_totals() {
    awk '
        /Scenario Screen/ { r = 0; t = 0; u = 0 }
        /---------->|<----------/ {
            # UAC lines read "NAME ARROW [E-RTD1] messages retrans timeout unexpected".
            n = 0; after = 0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^(---------->|<----------)$/) { after = 1; continue }
                if (after && $i ~ /^[0-9]+$/) v[++n] = $i
            }
            if (n >= 2) r += v[2]
            if (n >= 3) t += v[3]
            if (n >= 4) u += v[4]
        }
        END { printf "%d %d %d\n", r, t, u }' "$1" 2>/dev/null || echo "0 0 0"
}

# backend_count UASLOG: requests the backend received, from the last screen
# sipp printed (it writes no screen file when it is stopped by a signal).
backend_count() {
    awk '/----------> (INVITE|REGISTER)/ { n = $3 } END { print n + 0 }' "$1" 2>/dev/null || echo 0
}

# probes_answered UASLOG: OPTIONS probes the backend answered (with -aa, each
# probe is a call of its own that gets a 200): calls created minus requests.
probes_answered() {
    awk '$NF == "UDP" && $(NF - 1) ~ /^[0-9]+$/ { total = $(NF - 1) }
         /----------> (INVITE|REGISTER)/ { n = $3 }
         END { print total - n }' "$1" 2>/dev/null || echo 0
}

# run_step LB KIND RATE SECONDS LABEL REP: one measured step; appends a row to
# $ROWS and sets STEP_CLEAN=1 when it had no failed call, no retransmission
# and reached 90% of the asked rate.
STEP_NO=0
run_step() {
    local lb=$1 kind=$2 rate=$3 seconds=$4 label=$5 rep=$6
    STEP_NO=$((STEP_NO + 1))
    local dir
    dir="$RUN_DIR/$(printf '%03d' "$STEP_NO")-$lb-$label-$rate"
    mkdir -p "$dir"
    local uac_scenario uas_scenario
    case "$kind" in
        call) uac_scenario="$BENCH_DIR/scenarios/uac_call.xml"; uas_scenario="$BENCH_DIR/scenarios/uas_call.xml" ;;
        register) uac_scenario="$BENCH_DIR/scenarios/uac_register.xml"; uas_scenario="$BENCH_DIR/scenarios/uas_register.xml" ;;
    esac
    local calls=$((rate * seconds))
    local limit=$((rate * 10 > 200 ? rate * 10 : 200))
    local sipp_timeout=$((seconds + 30))
    local uas_seconds=$((seconds + 60))
    printf 'bench: step %d: %-8s %-14s rate %6d for %3ds (%d calls)... ' \
        "$STEP_NO" "$lb" "$label" "$rate" "$seconds" "$calls" >&2

    local uas1 uas2 lb_pid
    local uas1_sipp uas2_sipp
    start_uas "${BACKEND_PORTS[0]}" "$uas_scenario" "$uas_seconds" "$dir/uas1.log" \
        || die "backend on :${BACKEND_PORTS[0]} did not start, see $dir/uas1.log"
    uas1=$STARTED_PID uas1_sipp=$UAS_SIPP_PID
    start_uas "${BACKEND_PORTS[1]}" "$uas_scenario" "$uas_seconds" "$dir/uas2.log" \
        || die "backend on :${BACKEND_PORTS[1]} did not start, see $dir/uas2.log"
    uas2=$STARTED_PID uas2_sipp=$UAS_SIPP_PID
    start_lb "$lb" "$dir/$lb.log" || die "$lb did not bind $LB_ADDR:$LB_PORT, see $dir/$lb.log"
    lb_pid=$STARTED_PID
    sleep 1   # let Kamailio's workers and siphon's Python workers settle

    local pids pid
    mapfile -t pids < <(lb_pids "$lb_pid")
    # Kamailio's workers are stopped by their parent; tracked in case it is killed.
    for pid in "${pids[@]}"; do track "$pid"; done

    # Memory sampler: the LB's summed Pss once a second, in KiB.
    (
        while :; do
            pss_kib "${pids[@]}"
            sleep 1
        done
    ) >"$dir/pss.samples" 2>/dev/null &
    local sampler=$!
    track "$sampler"

    local uas_ticks0 ticks0 t0 ticks1 t1 uas_ticks1 drops0 drops1
    drops0=$(udp_rcvbuf_errors)
    uas_ticks0=$(cpu_ticks "$uas1_sipp" "$uas2_sipp")
    ticks0=$(cpu_ticks "${pids[@]}")
    t0=$(now_ms)
    # The UAC runs in the background and we wait for it, so that a signal to
    # this script is handled at once. timeout signals its whole process group
    # (the inner bash that times sipp, and sipp) when it is stopped.
    # shellcheck disable=SC2016 # the inner bash expands "$@" and $UAC_*.
    UAC_LOG="$dir/uac.log" UAC_CPU="$dir/uac-cpu.txt" \
        timeout -k 5 $((sipp_timeout + 15)) bash -c \
        'TIMEFORMAT="%3U %3S"; { time "$@" >"$UAC_LOG" 2>&1 </dev/null; } 2>"$UAC_CPU"' bench-uac \
        sipp -sf "$uac_scenario" -inf "$USERS_CSV" "$LB_ADDR:$LB_PORT" -i 127.0.0.1 \
        -r "$rate" -rp 1000 -m "$calls" -l "$limit" -nostdin \
        -recv_timeout 5000 -timeout "${sipp_timeout}s" -buff_size "$SOCKET_BUFFER" \
        -trace_stat -stf "$dir/uac-stat.csv" -fd 1 \
        -trace_screen -screen_file "$dir/uac-screen.log" &
    local uac=$!
    track "$uac"
    wait "$uac" || true
    unset "STARTED[$uac]"
    t1=$(now_ms)
    ticks1=$(cpu_ticks "${pids[@]}")
    uas_ticks1=$(cpu_ticks "$uas1_sipp" "$uas2_sipp")
    drops1=$(udp_rcvbuf_errors)
    local pss_now hwm
    pss_now=$(pss_kib "${pids[@]}")
    hwm=$(hwm_kib "${pids[@]}")
    echo "$pss_now" >>"$dir/pss.samples"

    stop_pid "$sampler" 1
    stop_pid "$lb_pid" 10
    for pid in "${pids[@]}"; do stop_pid "$pid" 2; done
    stop_pid "$uas1" 3
    stop_pid "$uas2" 3
    stop_pid "$uas1_sipp" 1
    stop_pid "$uas2_sipp" 1
    local split
    split="$(backend_count "$dir/uas1.log")/$(backend_count "$dir/uas2.log")"
    local probes
    probes="$(probes_answered "$dir/uas1.log")/$(probes_answered "$dir/uas2.log")"

    # ---- figures
    local ok failed elapsed_raw elapsed retrans timeouts unexpected
    ok=$(sipp_stat "$dir/uac-stat.csv" 'SuccessfulCall(C)' 2>/dev/null || true)
    failed=$(sipp_stat "$dir/uac-stat.csv" 'FailedCall(C)' 2>/dev/null || true)
    elapsed_raw=$(sipp_stat "$dir/uac-stat.csv" 'ElapsedTime(C)' 2>/dev/null || true)
    ok=${ok:-0}; failed=${failed:-0}
    if [ -n "$elapsed_raw" ]; then
        elapsed=$(elapsed_seconds "$elapsed_raw")
    else
        elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')
    fi
    read -r retrans timeouts unexpected < <(screen_totals "$dir/uac-screen.log")
    # Calls sipp never finished (killed by its own timeout) count as failed too.
    local unfinished=$((calls - ok - failed))
    [ "$unfinished" -gt 0 ] || unfinished=0
    failed=$((failed + unfinished))

    local uac_cpu
    uac_cpu=$(awk 'NF >= 2 { printf "%.3f", $1 + $2; found = 1 } END { if (!found) print "0" }' "$dir/uac-cpu.txt")
    local rss_peak_kib rss_mid_kib rss_end_kib
    rss_peak_kib=$(sort -n "$dir/pss.samples" | tail -1)
    rss_mid_kib=$(awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] + 0 }' "$dir/pss.samples")
    rss_end_kib=$(tail -1 "$dir/pss.samples")

    local row
    row=$(awk -v lb="$lb" -v mode="$label" -v rep="$rep" -v rate="$rate" -v ok="$ok" \
        -v failed="$failed" -v retrans="$retrans" -v elapsed="$elapsed" \
        -v ticks=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v window_ms=$((t1 - t0)) \
        -v uas_ticks=$((uas_ticks1 - uas_ticks0)) -v uac_cpu="$uac_cpu" \
        -v peak="${rss_peak_kib:-0}" -v mid="${rss_mid_kib:-0}" -v end="${rss_end_kib:-0}" \
        -v hwm="$hwm" -v spread="$split" -v probes="$probes" -v drops=$((drops1 - drops0)) '
        BEGIN {
            window = window_ms / 1000
            cpu = ticks / hz
            achieved = elapsed > 0 ? ok / elapsed : 0
            lb_pct = window > 0 ? 100 * cpu / window : 0
            per_k = ok > 0 ? 1000 * cpu / ok : 0
            sipp_pct = window > 0 ? 100 * (uac_cpu + uas_ticks / hz) / window : 0
            clean = (failed == 0 && retrans == 0 && ok > 0 && achieved >= 0.9 * rate) ? "yes" : "no"
            printf "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%.0f\t%.1f\t%.3f\t%.3f\t%.1f\t%.1f\t%.1f\t%.0f\t%s\t%s\t%d\t%s\n",
                lb, mode, rep, rate, ok, failed, retrans, achieved, lb_pct, per_k, cpu,
                peak / 1024, (end - mid) / 1024, hwm / 1024, sipp_pct, spread, probes, drops, clean
        }')
    echo "$row" >>"$ROWS"
    STEP_CLEAN=0
    [ "$(cut -f19 <<<"$row")" = yes ] && STEP_CLEAN=1
    awk -F'\t' '{ printf "ok %d, failed %d, retrans %d, %s calls/s, LB CPU %s%%, %s CPU-s/1000, %s MiB, UDP drops %s%s\n",
        $5, $6, $7, $8, $9, $10, $12, $18, ($19 == "yes" ? "" : "  [not clean]") }' <<<"$row" >&2
    if [ "$timeouts" -gt 0 ] || [ "$unexpected" -gt 0 ]; then
        echo "bench:   ($timeouts timeouts, $unexpected unexpected messages; logs in $dir)" >&2
    fi
}

run_fixed() {
    local kind=$1 label=$2 rep lb
    for rep in $(seq 1 "$REPS"); do
        for lb in "${LB_LIST[@]}"; do
            run_step "$lb" "$kind" "$RATE" "$DURATION" "$label" "$rep"
        done
    done
}

# run_ramp KIND LABEL: every LB climbs the same rates, alternating, until its
# first unclean step; RAMP_BEST[lb] is its highest clean rate.
declare -A RAMP_BEST=() RAMP_OPEN=()
run_ramp() {
    local kind=$1 label=$2 rate=$RAMP_START steps=0 lb
    local -A stopped=()
    for lb in "${LB_LIST[@]}"; do RAMP_BEST["$lb/$label"]=0; done
    while [ "$rate" -le "$RAMP_MAX" ]; do
        [ "$RAMP_STEPS" -eq 0 ] || [ "$steps" -lt "$RAMP_STEPS" ] || break
        local running=0
        for lb in "${LB_LIST[@]}"; do
            [ -z "${stopped[$lb]:-}" ] || continue
            running=1
            run_step "$lb" "$kind" "$rate" "$STEP_DURATION" "$label" "-"
            if [ "$STEP_CLEAN" = 1 ]; then
                RAMP_BEST["$lb/$label"]=$rate
            else
                stopped[$lb]=1
            fi
        done
        [ "$running" = 1 ] || break
        steps=$((steps + 1))
        rate=$((rate + RAMP_STEP))
    done
    # An LB that never failed only has a lower bound: the ramp ran out first.
    for lb in "${LB_LIST[@]}"; do
        [ -n "${stopped[$lb]:-}" ] || RAMP_OPEN["$lb/$label"]=1
    done
}

START_TIME=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
echo "bench: run directory $RUN_DIR" >&2
for mode in "${MODE_LIST[@]}"; do
    case "$mode" in
        fixed) run_fixed call fixed ;;
        ramp) run_ramp call ramp ;;
        register-fixed) run_fixed register register-fixed ;;
        register-ramp) run_ramp register register-ramp ;;
    esac
done

# ------------------------------------------------------------------ report --
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
# sipp -v exits 99, hence the || true.
sipp_version=$( (sipp -v 2>/dev/null || true) | awk '/SIPp/ { sub(/\.$/, "", $2); print $2; exit }')
kam_version=""
needs_lb kamailio && kam_version=$( (kamailio -v 2>/dev/null || true) | awk 'NR == 1 { print $3; exit }')
siphon_commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO_DIR" status --porcelain -- src scripts 2>/dev/null)" ]; then
    siphon_commit="$siphon_commit (uncommitted changes)"
fi

# fixed_mean LB MODE COLUMN [FORMAT]: a column's mean over the fixed reps.
fixed_mean() {
    awk -F'\t' -v lb="$1" -v mode="$2" -v col="$3" -v fmt="${4:-%.3f}" '
        $1 == lb && $2 == mode { s += $col; n++ }
        END { if (n) printf fmt, s / n; else print "" }' "$ROWS"
}

# ramp_best LB MODE: the highest clean rate, ">= N" when the ramp never failed.
ramp_best() {
    local best=${RAMP_BEST[$1/$2]:-}
    [ -n "$best" ] || return 0
    if [ -n "${RAMP_OPEN[$1/$2]:-}" ]; then
        echo ">= $best"
    elif [ "$best" = 0 ]; then
        echo "< $RAMP_START (failed the first step)"
    else
        echo "$best"
    fi
}

# ramp_caveat MODE: flags a max-rate ratio taken from a ramp that ended before an LB failed.
ramp_caveat() {
    if [ -n "${RAMP_OPEN[siphon/$1]:-}${RAMP_OPEN[kamailio/$1]:-}" ]; then
        echo " (a ramp ended before the LB failed: lower bound only)"
    fi
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'
}

{
    echo "# siphon bench: $START_TIME"
    echo
    echo "- command: \`bench/run.sh${ORIG_ARGS:+ $ORIG_ARGS}\`"
    echo "- LBs: ${LB_LIST[*]}; modes: ${MODE_LIST[*]}"
    echo "- fixed: $RATE/s for ${DURATION}s x $REPS; ramp: from $RAMP_START by $RAMP_STEP up to $RAMP_MAX, ${STEP_DURATION}s per step$([ "$RAMP_STEPS" -gt 0 ] && echo ", at most $RAMP_STEPS steps"); $USERS distinct To users"
    echo "- machine: $(nproc) cores, $cpu_model, $mem_total; $(uname -sr)"
    echo "- siphon $siphon_commit ($(basename "$SIPHON_SCRIPT")); sipp $sipp_version${kam_version:+; Kamailio $kam_version ($KAM_CHILDREN UDP children, ${KAM_SHM_MB} MiB shm)}"
    for note in "${NOTES[@]+"${NOTES[@]}"}"; do echo "- note: $note"; done
    echo
    echo "| LB | mode | rep | rate/s | ok | failed | retrans | achieved/s | LB CPU % | CPU-s per 1000 | LB CPU-s | RSS MiB (peak) | RSS growth 2nd half MiB | VmHWM MiB | sipp CPU % | backends 1/2 | probes 1/2 | UDP drops | clean |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -F'\t' '{ printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$ROWS"
    echo
    echo "## Summary"
    echo
    echo "| LB | calls: CPU-s per 1000 (mean) | calls: RSS MiB (mean peak) | calls: max clean rate | REGISTER: CPU-s per 1000 (mean) | REGISTER: max clean rate |"
    echo "|---|---:|---:|---:|---:|---:|"
    for lb in "${LB_LIST[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "$lb" \
            "$(fixed_mean "$lb" fixed 10)" "$(fixed_mean "$lb" fixed 12 %.1f)" \
            "$(ramp_best "$lb" ramp)" "$(fixed_mean "$lb" register-fixed 10)" \
            "$(ramp_best "$lb" register-ramp)"
    done
    if needs_lb siphon && needs_lb kamailio; then
        echo
        echo "siphon / Kamailio (CPU: lower is better, target <= 0.5; max rate: higher is better, target >= 1):"
        echo
        echo "- calls, CPU-s per 1000: $(ratio "$(fixed_mean siphon fixed 10)" "$(fixed_mean kamailio fixed 10)")"
        echo "- calls, max clean rate: $(ratio "${RAMP_BEST[siphon/ramp]:-}" "${RAMP_BEST[kamailio/ramp]:-}")$(ramp_caveat ramp)"
        echo "- REGISTER, CPU-s per 1000: $(ratio "$(fixed_mean siphon register-fixed 10)" "$(fixed_mean kamailio register-fixed 10)")"
        echo "- REGISTER, max clean rate: $(ratio "${RAMP_BEST[siphon/register-ramp]:-}" "${RAMP_BEST[kamailio/register-ramp]:-}")$(ramp_caveat register-ramp)"
    fi
    echo
    echo "Columns: retrans = retransmissions sent or received by the UAC; LB CPU = utime+stime of"
    echo "every LB process (all threads) while the UAC ran; RSS = the LB's summed Pss, sampled each"
    echo "second (peak, and growth from mid-run to the end); VmHWM = peak RSS of the LB's largest"
    echo "process; sipp CPU % = UAC + both UAS over the same window (100 % = one core); backends 1/2 =
requests each backend received (the To-URI hash spreads them); probes 1/2 = OPTIONS probes each
backend answered; UDP drops = the kernel's UDP RcvbufErrors during the step (machine-wide); clean = no"
    echo "failed call, no retransmission, and >= 90 % of the asked rate. Logs: $RUN_DIR"
} >"$OUT"

cat "$OUT"
echo "bench: results written to $OUT" >&2
