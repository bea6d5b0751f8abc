#!/usr/bin/env bash
# Lag from webhook accepted to follow-up received by a local target, at a steady rate.
# Usage: bench/followup-lag.sh [rate per second, default 1000] [seconds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cargo run --quiet --release --example followup_lag -- "${1:-1000}" "${2:-10}"
