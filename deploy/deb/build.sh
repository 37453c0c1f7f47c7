#!/usr/bin/env bash
# Builds siphon's Debian package: target/debian/siphon_VERSION_ARCH.deb.
#
# dpkg-deb (Debian's own packer, on every Debian machine) puts it together
# from a staged tree: no packaging tool to compile first, and the
# conffiles, maintainer scripts and units are plain files in this folder.
# The binary is built against the system's python3 (/usr/bin/python3), so
# it links the libpython of a Debian package, which the package depends on
# (dpkg-shlibdeps finds it and libc's version), and has no RUNPATH.
#
#   deploy/deb/build.sh            build (release profile, target/package)
#   SIPHON_DEB_SKIP_BUILD=1 ...    package the binary already built
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

python=/usr/bin/python3
[ -x "$python" ] || { echo "deb: $python is missing (apt-get install python3)" >&2; exit 1; }
ldversion="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')"
if ! "$python" -c 'import sysconfig, os, sys; d = sysconfig.get_config_var("LIBDIR"); sys.exit(not os.path.exists(os.path.join(d, "libpython" + sysconfig.get_config_var("LDVERSION") + ".so")))'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "deb: installing libpython$ldversion-dev to link against" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libpython$ldversion-dev" >/dev/null
    else
        echo "deb: libpython$ldversion-dev is missing" >&2
        exit 1
    fi
fi

target_dir="$repo/target/package"
if [ -z "${SIPHON_DEB_SKIP_BUILD:-}" ]; then
    PYO3_PYTHON="$python" cargo build --release --locked --target-dir "$target_dir"
fi
binary="$target_dir/release/siphon"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
out="$repo/target/debian"
root="$out/siphon_${version}_${arch}"
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/siphon" \
    "$root/usr/lib/systemd/system" "$root/usr/share/man/man1" \
    "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/doc/siphon"

install -m 0755 "$binary" "$root/usr/bin/siphon"
strip --strip-debug "$root/usr/bin/siphon"
dynamic="$(readelf -d "$root/usr/bin/siphon")"
if grep -E 'RUNPATH|RPATH' <<<"$dynamic" >&2; then
    echo "deb: the binary names a library path of the build host" >&2
    exit 1
fi

# The LB example as /etc/siphon/siphon.yaml, its script beside it.
{
    cat "$here/siphon.yaml.head"
    sed -e '1,/^$/d' -e 's|path: "../scripts/lb.py"|path: "lb.py"|' config/lb.yaml
} > "$root/etc/siphon/siphon.yaml"
grep -q 'path: "lb.py"' "$root/etc/siphon/siphon.yaml" || { echo "deb: script path not rewritten" >&2; exit 1; }
install -m 0640 scripts/lb.py "$root/etc/siphon/lb.py"
chmod 0640 "$root/etc/siphon/siphon.yaml"

install -m 0644 deploy/systemd/siphon.service deploy/systemd/siphon@.service \
    "$root/usr/lib/systemd/system/"
"$root/usr/bin/siphon" man | gzip -9n > "$root/usr/share/man/man1/siphon.1.gz"
"$root/usr/bin/siphon" completions bash > "$root/usr/share/bash-completion/completions/siphon"
"$root/usr/bin/siphon" completions zsh > "$root/usr/share/zsh/vendor-completions/_siphon"
"$root/usr/bin/siphon" completions fish > "$root/usr/share/fish/vendor_completions.d/siphon.fish"
cat > "$root/usr/share/doc/siphon/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: siphon

Files: *
License: MIT
COPYRIGHT
gzip -9nc README.md > "$root/usr/share/doc/siphon/README.md.gz"

install -m 0755 "$here"/maintainer/postinst "$here"/maintainer/prerm "$here"/maintainer/postrm "$root/DEBIAN/"
printf '/etc/siphon/siphon.yaml\n/etc/siphon/lb.py\n' > "$root/DEBIAN/conffiles"

# The shared libraries' packages and versions, as dpkg-shlibdeps reads them.
shlibs="$(mktemp -d)"
mkdir -p "$shlibs/debian"
printf 'Source: siphon\n\nPackage: siphon\nArchitecture: any\n' > "$shlibs/debian/control"
depends="$(cd "$shlibs" && dpkg-shlibdeps -O "$root/usr/bin/siphon" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
rm -rf "$shlibs"
case "$depends" in
    *libpython*) ;;
    *) echo "deb: dpkg-shlibdeps found no libpython dependency ($depends)" >&2; exit 1 ;;
esac
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: siphon
Version: $version
Architecture: $arch
Maintainer: siphon developers <siphon@example.com>
Installed-Size: $installed_kb
Depends: $depends, adduser
Section: net
Priority: optional
Description: SIP proxy and load balancer, routed by Python scripts
 siphon spreads SIP traffic over gateway groups (weighted, round robin,
 hash, least calls; priority tiers, call and rate limits, drain), fails
 over within the transaction, probes and ejects backends, and can run as
 a registrar and proxy itself. It is routed by a Python script and
 configured by one YAML file; SIGHUP reloads both in place.
CONTROL

mkdir -p "$out"
deb="$out/siphon_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
rm -rf "$root"
echo "$deb"
