#!/usr/bin/env bash
# Installs the package built by deploy/deb/build.sh and uses it as an
# operator would, then purges it (CI runs this as root):
#   - dpkg installs it (apt-get resolves its dependencies);
#   - systemd-analyze verifies both units;
#   - `siphon --check` passes on the shipped /etc/siphon/siphon.yaml;
#   - /usr/bin/siphon runs as user siphon with CAP_NET_BIND_SERVICE alone
#     (as the unit starts it), bound to port 5060, and a sipp call through
#     it to a sipp backend on 127.0.0.1:5071 passes;
#   - dpkg --purge removes it, its config and its state.
# Where systemd is not PID 1 (CI's container), the unit is verified, not
# started; READY=1 is tested by tests/e2e_service.rs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
deb="${1:-$(ls -t "$repo"/target/debian/siphon_*.deb 2>/dev/null | head -1)}"
[ -f "$deb" ] || { echo "smoke: no package; run deploy/deb/build.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "smoke: run as root" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    pkill -f "gw_uas.xml -key backend b50" 2>/dev/null || true
    if dpkg -s siphon >/dev/null 2>&1; then dpkg --purge siphon >/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { echo "== deb: $*"; }

step "install $(basename "$deb")"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
dpkg -s siphon | grep -E '^(Version|Depends):'
getent passwd siphon >/dev/null || { echo "smoke: no siphon user" >&2; exit 1; }
stat -c '%U:%G %a %n' /etc/siphon /etc/siphon/siphon.yaml

step "systemd-analyze verify"
mkdir -p "$work/units"
cp /usr/lib/systemd/system/siphon.service "$work/units/"
cp /usr/lib/systemd/system/siphon@.service "$work/units/siphon@ci.service"
sed -i 's|%i|ci|g' "$work/units/siphon@ci.service"
for unit in "$work/units/siphon.service" "$work/units/siphon@ci.service"; do
    status=0
    out="$(systemd-analyze verify --man=no "$unit" 2>&1)" || status=$?
    if [ "$status" != 0 ] || printf '%s\n' "$out" | grep -F "$(basename "$unit")"; then
        printf '%s\n' "$out" >&2
        echo "smoke: systemd-analyze verify found problems in $(basename "$unit")" >&2
        exit 1
    fi
done
man -w siphon >/dev/null 2>&1 || zcat /usr/share/man/man1/siphon.1.gz | head -1

step "siphon --check as user siphon"
setpriv --reuid=siphon --regid=siphon --init-groups \
    /usr/bin/siphon --check --config /etc/siphon/siphon.yaml

step "a sipp backend on 127.0.0.1:5071 and :5072"
for port in 5071 5072; do
    sipp -sf "$repo/tests/sipp/gw_uas.xml" -key backend "b$port" -i 127.0.0.1 -p "$port" \
        -m 1000 -nostdin -bg >/dev/null 2>&1 || true
done
sleep 0.5

step "siphon as user siphon with CAP_NET_BIND_SERVICE only, on port 5060"
setpriv --reuid=siphon --regid=siphon --init-groups \
    --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
    --bounding-set=-all,+net_bind_service --no-new-privs \
    /usr/bin/siphon --config /etc/siphon/siphon.yaml >"$work/siphon.log" 2>&1 &
pids+=("$!")
siphon_pid="$!"
for _ in $(seq 1 100); do
    grep -q "siphon ready" "$work/siphon.log" && break
    sleep 0.1
done
grep -q "siphon ready" "$work/siphon.log" || { cat "$work/siphon.log"; exit 1; }
user="$(ps -o user= -p "$siphon_pid")"
[ "$user" = siphon ] || { echo "smoke: runs as $user" >&2; exit 1; }
grep CapEff "/proc/$siphon_pid/status"
ss -lunp >"$work/sockets"
grep -q "127.0.0.1:5060 .*pid=$siphon_pid" "$work/sockets" || { cat "$work/sockets"; echo "smoke: not on 5060" >&2; exit 1; }
sleep 1 # the first probes

step "a call through it"
cd "$work"
if ! sipp 127.0.0.1:5060 -sf "$repo/tests/sipp/uac_call.xml" -s bob -i 127.0.0.1 -p 5090 \
    -key uas 127.0.0.1:5060 -key tp udp -m 1 -timeout 15s -timeout_error -nostdin -trace_err \
    >"$work/sipp.out" 2>&1; then
    cat "$work/sipp.out" "$work"/*errors* "$work/siphon.log" 2>/dev/null | tail -40
    echo "smoke: the call failed" >&2
    exit 1
fi
echo "call passed"
kill "$siphon_pid"
wait "$siphon_pid" 2>/dev/null || true

step "the capability is what binds a port below 1024 (506)"
if [ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -gt 506 ]; then
    low() {
        SIPHON_LISTEN=127.0.0.1:506 setpriv --reuid=siphon --regid=siphon --init-groups \
            --inh-caps="-all$1" --ambient-caps="-all$1" --bounding-set="-all$1" --no-new-privs \
            /usr/bin/siphon --config /etc/siphon/siphon.yaml >"$work/low.log" 2>&1 &
        low_pid=$!
        pids+=("$low_pid")
        for _ in $(seq 1 50); do
            grep -q "siphon ready" "$work/low.log" && break
            kill -0 "$low_pid" 2>/dev/null || break
            sleep 0.1
        done
    }
    low ",+net_bind_service"
    grep -q "siphon ready" "$work/low.log" || { cat "$work/low.log"; echo "smoke: 506 with the capability" >&2; exit 1; }
    kill "$low_pid"; wait "$low_pid" 2>/dev/null || true
    low ""
    if grep -q "siphon ready" "$work/low.log" || ! grep -q "CAP_NET_BIND_SERVICE" "$work/low.log"; then
        cat "$work/low.log"; echo "smoke: 506 without the capability" >&2; exit 1
    fi
    echo "506: ready with CAP_NET_BIND_SERVICE; without it: $(grep -o 'cannot bind[^(]*' "$work/low.log" | head -1)"
else
    echo "this kernel lets anyone bind 506 (ip_unprivileged_port_start); skipped"
fi

step "purge"
dpkg --purge siphon >/dev/null
for gone in /usr/bin/siphon /etc/siphon /usr/lib/systemd/system/siphon.service /var/lib/siphon; do
    [ ! -e "$gone" ] || { echo "smoke: $gone is still there after purge" >&2; exit 1; }
done
echo "deb: installed, verified, ran a call as user siphon on 5060, purged"
