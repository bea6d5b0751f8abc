#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), two at a time, and prints exec counts.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
run() {
  cargo +nightly fuzz run -O "$1" "corpus/$1" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -print_final_stats=1 > "logs/$1.log" 2>&1
  echo "$1: exit $? $(grep -E '^stat::number_of_executed_units' "logs/$1.log")"
}
mkdir -p logs
targets=(bik_parse meta_parse generic_parse callback_decode verify_signatures template_render)
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & run "${targets[i+1]}" & wait
done
