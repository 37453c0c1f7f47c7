#!/usr/bin/env bash
# Builds siphon's container image with podman from deploy/container/
# Containerfile, and proves it without starting a container:
#   1. base images come from this machine's Debian sources (mmdebstrap;
#      registries of images cannot be reached here): a build base with gcc
#      and python3-dev, and a slim runtime base, each `FROM scratch` + `ADD`;
#   2. `podman build` (chroot isolation: RUN steps need no container
#      runtime) compiles siphon in the build stage with the host's Rust
#      toolchain mounted (Debian's rustc is too old for the lockfile) and
#      puts it in the runtime stage;
#   3. the image's filesystem is exported (`podman create` + `podman
#      export`), and in it, by chroot, as user siphon: `siphon --check`, then
#      siphon serving a real sipp call to a sipp backend on this host.
# Run as root. Prints the image's size and each check.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${SIPHON_IMAGE:-localhost/siphon:latest}"
suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
work="$(mktemp -d /var/tmp/siphon-container.XXXXXX)"
root="$work/root"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    pkill -f "gw_uas.xml -key backend c50" 2>/dev/null || true
    umount -l "$root/proc" 2>/dev/null || true
    podman rm -f siphon-export >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
step() { echo "== container: $*"; }
for tool in podman mmdebstrap sipp; do
    command -v "$tool" >/dev/null || { echo "container: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

step "base images from the $suite sources (mmdebstrap)"
base() {
    local name=$1 variant=$2 include=$3
    if podman image exists "localhost/siphon-$name:$suite"; then return; fi
    # Slim: no manuals, docs or translations, no recommended packages.
    mmdebstrap --quiet --variant="$variant" --include="$include" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$suite" "$work/$name.tar"
    printf 'FROM scratch\nADD %s.tar /\nCMD ["/bin/bash"]\n' "$name" > "$work/Containerfile.$name"
    podman build --quiet -t "localhost/siphon-$name:$suite" -f "$work/Containerfile.$name" "$work" >/dev/null
    rm -f "$work/$name.tar"
}
base build-base apt gcc,libc6-dev,python3-dev,pkg-config,ca-certificates
base runtime-base apt ca-certificates,passwd
# (Delete localhost/siphon-*-base:$suite to make them again.)

step "podman build"
toolchain="$(rustc --print sysroot)"
podman build --isolation chroot \
    --build-arg BUILD_IMAGE="localhost/siphon-build-base:$suite" \
    --build-arg RUNTIME_IMAGE="localhost/siphon-runtime-base:$suite" \
    --volume "$toolchain:/usr/local/rust:ro" \
    --volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" \
    -f "$here/Containerfile" -t "$image" "$repo"
podman image inspect --format 'image {{.RepoTags}}: {{.Size}} bytes' "$image"
echo "image size: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"

step "export the image's filesystem (podman create + podman export)"
podman create --name siphon-export "$image" >/dev/null
mkdir -p "$root"
podman export siphon-export | tar -x -C "$root"
podman rm siphon-export >/dev/null
mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

step "siphon --check in it, as user siphon"
chroot --userspec=siphon:siphon "$root" /usr/bin/siphon --check --config /etc/siphon/siphon.yaml

step "a call through siphon in it, as user siphon, to sipp backends on 5071 and 5072"
for port in 5071 5072; do
    sipp -sf "$repo/tests/sipp/gw_uas.xml" -key backend "c$port" -i 127.0.0.1 -p "$port" \
        -m 1000 -nostdin -bg >/dev/null 2>&1 || true
done
chroot --userspec=siphon:siphon "$root" /usr/bin/siphon --config /etc/siphon/siphon.yaml \
    >"$work/siphon.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    grep -q "siphon ready" "$work/siphon.log" && break
    sleep 0.1
done
grep -q "siphon ready" "$work/siphon.log" || { cat "$work/siphon.log"; exit 1; }
sleep 1
cd "$work"
if sipp 127.0.0.1:5060 -sf "$repo/tests/sipp/uac_call.xml" -s bob -i 127.0.0.1 -p 5091 \
    -key uas 127.0.0.1:5060 -key tp udp -m 1 -timeout 15s -timeout_error -nostdin \
    >"$work/sipp.out" 2>&1; then
    echo "call passed"
else
    tail -30 "$work/siphon.log"
    echo "container: the call failed" >&2
    exit 1
fi
echo "container: $image built, checked and called through"
