#!/usr/bin/env bash
# What hash_bound costs and buys, simulated with siphon's own selector and
# call counters (examples/hash_bound.rs): the share of calls that leave
# their first choice in HRW order, and the busiest destination's load over
# the mean, for 10,000 subscribers with Zipf-skewed call rates over 4
# destinations, without a bound and with 1.1, 1.25 and 1.5.
#
# Usage: bench/hash-bound.sh [calls_per_sec] [mean_call_secs] [sim_secs] [bound...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYO3_PYTHON="${PYO3_PYTHON:-$(command -v python3)}"
exec cargo run --quiet --release --example hash_bound -- "$@"
