#!/usr/bin/env bash
# Run siphon's whole test suite: unit tests plus the end-to-end tests that
# drive the daemon with sipp, redis-server, redis-sentinel and a Redis
# Cluster (the registrar store), baresip
# (real softphones), Kamailio (a registrar behind the LB), headless Chromium running JsSIP (a WebRTC phone, from
# npm), sngrep (fed by siphon's HEP capture), an OTLP receiver decoding with
# OpenTelemetry's Python protobufs (opentelemetry-proto) and, as root, network namespaces (ip netns) for separate caller,
# proxy and backend hosts.
#
# Run as root on a Debian/Ubuntu machine, it installs the missing tools with
# apt first. Extra arguments go to the test runner, e.g.
#   ./test.sh -E 'binary(e2e_calls)'
# Exit code: the test runner's (then pytest's, for the script SDK).
set -euo pipefail
cd "$(dirname "$0")"

# Install a Debian package providing COMMAND when COMMAND is missing and we can.
need() {
    local command=$1 package=$2
    command -v "$command" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing $package (for $command)" >&2
        if [ -z "${APT_UPDATED:-}" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
    else
        echo "test.sh: warning: $command not found (package $package); tests that need it will fail" >&2
    fi
}

need sipp sip-tester
need redis-server redis-server
need redis-sentinel redis-sentinel # the Sentinel failover test and the cluster demo
need redis-cli redis-tools # redis-cli --cluster create
need baresip baresip-core
need kamailio kamailio # a registrar behind the LB (tests/e2e_kamailio.rs)
need ip iproute2 # network namespaces for the multi-host tests (as root)
need chromium chromium # the WebRTC browser test (tests/e2e_browser.rs)
need npm npm
need sngrep sngrep # a HEP consumer for the capture test (tests/e2e_capture.rs)

# JsSIP for the browser test, at the version package-lock.json pins,
# bundled for the page.
browser=tests/browser
if [ ! -f "$browser/jssip.bundle.js" ] || [ "$browser/package-lock.json" -nt "$browser/jssip.bundle.js" ]; then
    if command -v npm >/dev/null 2>&1; then
        npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error
        npm run --prefix "$browser" --silent build
    else
        echo "test.sh: warning: npm not found; the browser test will be skipped" >&2
    fi
fi

# The OTLP receiver of the tracing test (tests/otlp_receiver.py) decodes
# what siphon exports with OpenTelemetry's own protobuf classes (PyPI).
if ! python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null; then
    python3 -m pip --version >/dev/null 2>&1 || need pip3 python3-pip
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check opentelemetry-proto
fi

# Build and link against the python3 on PATH (see DESIGN.md: pyo3 + rpath).
PYO3_PYTHON="$(command -v python3)"
export PYO3_PYTHON

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets "$@"
else
    echo "test.sh: cargo-nextest not found, using cargo test" >&2
    cargo test --all-targets "$@"
fi

# The script SDK (python/): the stubs with mypy, the offline harness, and the
# example tests of the shipped scripts, against the binary just built. Skipped
# when the runner was given a filter.
if [ "$#" -eq 0 ]; then
    python3 -m pip --version >/dev/null 2>&1 || need pip3 python3-pip
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check ./python pytest mypy
    target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"
    SIPHON_BIN="$target_dir/debug/siphon" python3 -m pytest -q scripts/tests python/tests
fi
