#!/usr/bin/env bash
# Forwarding, measured (issue 22's figures), run by hand (not in CI), in one run:
#   1. the ceiling: a bare actix-web server (examples/ceiling.rs) answering 200 to every POST;
#   2. durable ingest (sled, `sync`, one HTTP worker, wrk 1 thread / 64 connections, fresh
#      message ids) without forwards and with two forwards to the ceiling server, alternated
#      ROUNDS times (default 2) so that drift on this noisy machine hits both alike; after each
#      run with forwards, every accepted event must have been delivered to both;
#   3. the lag from a webhook's 200 to each forward's delivery at LAG_RATE/s (default 1,000)
#      for LAG_SECONDS (default 20), two forwards (examples/forward_lag.rs);
#   4. a consumer down for OUTAGE seconds (default 60) while webhooks arrive at OUTAGE_RATE/s
#      (default 100), its forward limited to DRAIN_RATE calls/s (default 100): nothing lost,
#      how long the backlog takes once it is back, and the most deliveries in one second.
# Prints the figures and writes them to bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
LAG_RATE=${LAG_RATE:-1000}
LAG_SECONDS=${LAG_SECONDS:-20}
OUTAGE=${OUTAGE:-60}
OUTAGE_RATE=${OUTAGE_RATE:-100}
DRAIN_RATE=${DRAIN_RATE:-100}
FLOWHOOK_PORT=18090
CEILING_PORT=18099
MOCK_PORT=18098
export BIK_KEY=bench-key

# shellcheck source=bench/lib.sh
source bench/lib.sh
need_wrk
echo "building release binaries..."
nice -n 5 cargo build --release --quiet --bin flowhook --example ceiling --example forward_lag

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

forwards_toml() {
    for name in crm warehouse; do
        cat <<TOML
[[forwards]]
name = "$name"
url = "http://127.0.0.1:$CEILING_PORT/$name"
secret = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ=="
max_in_flight = 64
rate_per_second = 0
TOML
    done
}

declare -A RPS P99 REQS
measure() { # name url
    local out="$work/$1.wrk"
    wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/bik-status.lua "$2" > "$out"
    RPS[$1]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out")
    P99[$1]=$(awk '$1=="99%" {print $2}' "$out")
    REQS[$1]=$(awk '/requests in/ {print $1}' "$out")
    local errors; errors=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {n+=1} END {print n+0}' "$out")
    printf '%-22s %8s req/s  p99 %8s  errors %s\n' "$1" "${RPS[$1]}" "${P99[$1]}" "$errors"
}

# The forwards' delivered count, from /metrics.
delivered() {
    curl -s "http://127.0.0.1:$FLOWHOOK_PORT/metrics" |
        awk '/^flowhook_actions_total/ && /action="forward"/ && /outcome="delivered"/ {n += $NF} END {printf "%d", n}'
}

./target/release/examples/ceiling "$CEILING_PORT" 1 & pids+=($!)
wait_up "http://127.0.0.1:$CEILING_PORT/" POST
measure ceiling "http://127.0.0.1:$CEILING_PORT"

LOST=0
declare -a PLAIN WITH
for round in $(seq 1 "$ROUNDS"); do
    for kind in plain forwards; do
        store="$work/store-$kind-$round"
        extra=""; [ "$kind" = forwards ] && extra=$(forwards_toml)
        flowhook_config "$work/$kind.toml" "$FLOWHOOK_PORT" "$store" sync 1 "$MOCK_PORT" "$extra"
        ./target/release/flowhook --config "$work/$kind.toml" serve 2>>"$work/flowhook.log" &
        pid=$!; pids+=("$pid")
        wait_up "http://127.0.0.1:$FLOWHOOK_PORT/healthz"
        measure "$kind-$round" "http://127.0.0.1:$FLOWHOOK_PORT"
        if [ "$kind" = forwards ]; then
            WITH+=("${RPS[$kind-$round]}")
            want=$(( 2 * REQS[$kind-$round] ))
            for _ in $(seq 600); do [ "$(delivered)" -ge "$want" ] && break; sleep 0.1; done
            got=$(delivered)
            echo "  deliveries: $got of $want"
            [ "$got" -ge "$want" ] || LOST=$(( LOST + want - got ))
        else
            PLAIN+=("${RPS[$kind-$round]}")
        fi
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
        rm -rf "$store"
    done
done

mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.0f", s / NR}'; }
plain=$(mean "${PLAIN[@]}"); with=$(mean "${WITH[@]}")
cost=$(awk -v p="$plain" -v w="$with" 'BEGIN {printf "%.1f", (1 - w / p) * 100}')
echo "durable ingest: $plain req/s without forwards, $with with two ($cost% less); ceiling ${RPS[ceiling]}"

echo "lag at $LAG_RATE/s for $LAG_SECONDS s, two forwards..."
LAG_OUT=$(./target/release/examples/forward_lag "$LAG_RATE" "$LAG_SECONDS" 2>>"$work/flowhook.log")
echo "$LAG_OUT"
echo "a consumer down for $OUTAGE s at $OUTAGE_RATE webhooks/s, forward limited to $DRAIN_RATE/s..."
OUTAGE_OUT=$(./target/release/examples/forward_lag "$OUTAGE_RATE" "$OUTAGE" "$OUTAGE" "$DRAIN_RATE" \
    2>>"$work/flowhook.log")
echo "$OUTAGE_OUT"

{
    echo
    echo "## Forwarding ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
    echo
    echo "\`bench/forward.sh\`: $(nproc) cores; sled, \`sync\`, one HTTP worker; wrk 1 thread, 64"
    echo "connections, ${DURATION} s per run, ${ROUNDS} rounds alternating; forwards to the ceiling server."
    echo
    echo "| run | req/s | p99 |"
    echo "|---|---|---|"
    echo "| ceiling (bare actix) | ${RPS[ceiling]} | ${P99[ceiling]} |"
    for round in $(seq 1 "$ROUNDS"); do
        echo "| no forwards, round $round | ${RPS[plain-$round]} | ${P99[plain-$round]} |"
        echo "| two forwards, round $round | ${RPS[forwards-$round]} | ${P99[forwards-$round]} |"
    done
    echo
    echo "- Two forwards cost **$cost%** of durable ingest ($with against $plain req/s, mean of the rounds; floor: at most 30%)."
    echo "- Deliveries not made after the runs with forwards: $LOST (every accepted event to both forwards)."
    echo "- At $LAG_RATE webhooks/s for $LAG_SECONDS s, two forwards (examples/forward_lag.rs):"
    echo "$LAG_OUT" | sed 's/^/  - /'
    echo "- A consumer down for $OUTAGE s (503) at $OUTAGE_RATE webhooks/s, its forward at rate_per_second $DRAIN_RATE, retry schedule 1, 2, 4 ... 64 s:"
    echo "$OUTAGE_OUT" | sed 's/^/  - /'
} >> bench/results.md
echo "appended to bench/results.md"
