#!/usr/bin/env bash
# The full benchmark, run by hand (not in CI): on this machine, side by side,
#   1. the ceiling: a bare actix-web server (examples/ceiling.rs) answering 200 to the same POST;
#   2. flowhook, durability "sync", then "relaxed": ~700-byte BIK webhooks, fresh message ids,
#      one rule matching a tenth of them (its follow-ups go to the ceiling server);
#   3. flowhook "sync" again after PRELOAD (default 1,000,000) stored messages: throughput, RSS,
#      disk bytes per message;
#   4. the lag from webhook accepted to follow-up received by a local target at LAG_RATE/s;
#   5. one more event on a message with 1,000 events (examples/long_message.rs), and what sled
#      alone writes with flowhook's keys (examples/sled_floor.rs), the floor under ingest.
# wrk: 1 thread, 64 connections, DURATION seconds; flowhook and the ceiling get 1 HTTP worker.
# Prints a table and writes it, with the machine, to bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
PRELOAD=${PRELOAD:-1000000}
LAG_RATE=${LAG_RATE:-1000}
LAG_SECONDS=${LAG_SECONDS:-20}
FLOWHOOK_PORT=18090
CEILING_PORT=18099
MOCK_PORT=18098
export BIK_KEY=bench-key

if ! command -v wrk >/dev/null; then
    sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
echo "building release binaries..."
cargo build --release --quiet --bin flowhook --example ceiling --example preload --example followup_lag \
    --example long_message --example sled_floor

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

config() { # mode store
    flowhook_config "$work/$1.toml" "$FLOWHOOK_PORT" "$2" "$1" 1 "$MOCK_PORT" "[[rules]]
name = \"tenth\"
on = \"status\"
statuses = [\"delivered\"]
when = { \"callback.campaign\" = \"abandoned_cart\" }
action = \"http.post\"
params = { url = \"http://127.0.0.1:$CEILING_PORT/hook\", body = { order = \"{{callback.order_id}}\" } }"
    echo "$work/$1.toml"
}

start_flowhook() { # config
    ./target/release/flowhook --config "$1" serve 2>>"$work/flowhook.log" &
    flowhook_pid=$!
    pids+=("$flowhook_pid")
    wait_up "http://127.0.0.1:$FLOWHOOK_PORT/healthz"
}

stop_flowhook() {
    kill -TERM "$flowhook_pid"; wait "$flowhook_pid" 2>/dev/null || true
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

declare -A RPS P50 P99 ERR REQS
measure() { # name url
    local out="$work/$1.wrk"
    wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/bik-status.lua "$2" > "$out"
    RPS[$1]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out")
    P50[$1]=$(awk '$1=="50%" {print $2}' "$out")
    P99[$1]=$(awk '$1=="99%" {print $2}' "$out")
    REQS[$1]=$(awk '/requests in/ {print $1}' "$out")
    ERR[$1]=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {n+=1} END {print n+0}' "$out")
    printf '%-22s %8s req/s  p50 %8s  p99 %8s  errors %s\n' "$1" "${RPS[$1]}" "${P50[$1]}" "${P99[$1]}" "${ERR[$1]}"
}

./target/release/examples/ceiling "$CEILING_PORT" 1 & pids+=($!)
wait_up "http://127.0.0.1:$CEILING_PORT/" POST

measure ceiling "http://127.0.0.1:$CEILING_PORT"

for mode in sync relaxed; do
    store="$work/store-$mode"
    start_flowhook "$(config "$mode" "$store")"
    measure "$mode" "http://127.0.0.1:$FLOWHOOK_PORT"
    stop_flowhook
done
DISK_PER_MSG=$(( $(du -sb "$work/store-sync" | cut -f1) / REQS[sync] ))

echo "preloading $PRELOAD messages..."
big="$work/store-big"
PRELOAD_OUT=$(./target/release/examples/preload "$big" "$PRELOAD" 2>/dev/null)
echo "$PRELOAD_OUT"
start_flowhook "$(config sync "$big")"
RSS_OPEN=$(rss_mb "$flowhook_pid")
measure sync_after_preload "http://127.0.0.1:$FLOWHOOK_PORT"
RSS_BIG=$(rss_mb "$flowhook_pid")
stop_flowhook
DISK_BIG=$(du -sb "$big" | cut -f1)
BIG_MSGS=$(( PRELOAD + REQS[sync_after_preload] ))

start_flowhook "$(config sync "$work/store-lag")"
LAG_OUT=$(FLOWHOOK_URL="http://127.0.0.1:$FLOWHOOK_PORT" MOCK_PORT=$MOCK_PORT \
    ./target/release/examples/followup_lag "$LAG_RATE" "$LAG_SECONDS")
RSS_LAG=$(rss_mb "$flowhook_pid")
stop_flowhook
echo "$LAG_OUT"

LONG_OUT=$(./target/release/examples/long_message "$work/store-long" 1000)
echo "$LONG_OUT"
mkdir -p "$work/floor"
FLOOR_OUT=$(./target/release/examples/sled_floor "$work/floor" 200000 16)
echo "$FLOOR_OUT"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
loss=$(awk -v a="${RPS[sync_after_preload]}" -v b="${RPS[sync]}" 'BEGIN {printf "%.0f", (1 - a/b) * 100}')
lag_line=$(grep -E '^lag' <<<"$LAG_OUT" || echo "lag: not measured")

{
    echo "# flowhook benchmark"
    echo
    echo "Run: $(date -u +%Y-%m-%dT%H:%M:%SZ) by \`bench/run.sh\` (DURATION=$DURATION s, PRELOAD=$PRELOAD, LAG_RATE=$LAG_RATE/s for $LAG_SECONDS s)."
    echo
    echo "Machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(rustc --version)."
    echo "wrk: 1 thread, 64 connections; the servers: 1 HTTP worker each; all on the same cores."
    echo
    echo "| run | req/s | p50 | p99 | errors | vs ceiling |"
    echo "|---|---|---|---|---|---|"
    for name in ceiling sync relaxed sync_after_preload; do
        echo "| $name | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${ERR[$name]} | $(ratio "${RPS[$name]}" "${RPS[ceiling]}") |"
    done
    echo
    echo "- Disk: $DISK_PER_MSG bytes per message (sync run); $(( DISK_BIG / BIG_MSGS )) bytes per message at $BIG_MSGS messages."
    echo "- After $PRELOAD stored messages: throughput change ${loss}% (loss; negative is a gain), RSS $RSS_BIG MB ($RSS_OPEN MB just after opening the store, before any request)."
    echo "- Preload: $PRELOAD_OUT"
    echo "- Follow-up $lag_line (RSS during the lag run: $RSS_LAG MB)."
    echo "  $(grep -E '^webhooks' <<<"$LAG_OUT")"
    echo "- Long message: $LONG_OUT."
    while read -r line; do echo "- $line"; done <<<"$FLOOR_OUT"
    echo
    echo "| target | goal | measured |"
    echo "|---|---|---|"
    echo "| durable ingest | >= 0.35x ceiling, p99 <= 15 ms | $(ratio "${RPS[sync]}" "${RPS[ceiling]}")x, p99 ${P99[sync]} |"
    echo "| relaxed ingest | >= 0.5x ceiling | $(ratio "${RPS[relaxed]}" "${RPS[ceiling]}")x |"
    echo "| at $PRELOAD messages | <= 20% throughput loss, RSS <= 150 MB | ${loss}%, $RSS_BIG MB |"
    echo "| follow-up lag | p99 <= 50 ms at 1,000/s | $lag_line |"
    echo "| a new event on a message with 1,000 events | < 2 ms | $(sed -E 's/.*events: (p50 [^,]*, p99 [^;]*);.*/\1/' <<<"$LONG_OUT") |"
    # Hand-written analysis below the marker survives a new run.
    if [ -f bench/results.md ] && grep -q '^<!-- notes -->' bench/results.md; then
        echo
        sed -n '/^<!-- notes -->/,$p' bench/results.md
    fi
} > "$work/results.md"
mv "$work/results.md" bench/results.md
echo
cat bench/results.md
