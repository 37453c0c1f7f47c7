# Helpers the demos' validate.sh scripts share; sourced, not run. The caller
# sets CHECK (check.py), WORK (the work directory), TOTAL (its number of
# assertions) and KEEP (1 keeps WORK even on success), and appends every
# process it starts to PIDS.
# shellcheck shell=bash

PIDS=()
PASSED=0
FAILED=0

log() { printf '%s\n' "$*"; }
fail_now() { log "ABORT: $*"; exit 1; }

# Stops every process in PIDS (TERM, then KILL after 3 s) and removes WORK
# unless something failed or KEEP=1.
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$FAILED" -gt 0 ] || [ "${KEEP:-0}" = 1 ] || [ "$PASSED" -lt "$TOTAL" ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# forget_pid PID: a process this script stopped itself and reaped, so the
# clean-up never signals its number (which the system may give another).
forget_pid() {
    local pid kept=()
    for pid in "${PIDS[@]}"; do
        [ "$pid" = "$1" ] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# result N DESCRIPTION STATUS [DETAIL]: one PASS/FAIL line per assertion.
result() {
    local number=$1 description=$2 status=$3 detail=${4:-}
    if [ "$status" = 0 ]; then
        PASSED=$((PASSED + 1))
        log "PASS $number: $description${detail:+ ($detail)}"
    else
        FAILED=$((FAILED + 1))
        log "FAIL $number: $description${detail:+ ($detail)}"
    fi
}

# The closing line, and the exit code: 0 only when every assertion passed.
finish() {
    if [ "$FAILED" = 0 ] && [ "$PASSED" = "$TOTAL" ]; then
        log "ALL $TOTAL ASSERTIONS PASSED"
        exit 0
    fi
    log "$FAILED OF $TOTAL ASSERTIONS FAILED"
    [ -z "${1:-}" ] || show_tail "$1" 20
    exit 1
}

# Print the tail of a log to help whoever reads a FAIL.
show_tail() {
    log "--- last lines of $1 ---"
    tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    /'
}

# wait_ready LOG PID NAME: wait for `siphon ready` in LOG.
wait_ready() {
    if ! python3 "$CHECK" wait-log "$1" "siphon ready" 15; then
        show_tail "$1" 30
        fail_now "$3 did not log 'siphon ready' within 15 s"
    fi
    kill -0 "$2" 2>/dev/null || fail_now "$3 exited"
}

# count_matching FILE REGEX
count_matching() { grep -cE "$2" "$1" 2>/dev/null || true; }

# seconds_since START: seconds since START (a `date +%s.%N`), one decimal.
seconds_since() {
    python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"
}
