#!/usr/bin/env bash
# The full benchmark, run by hand (not in CI): on this machine, side by side,
#   1. the ceiling: a bare actix-web server (examples/ceiling.rs) answering 200 to the same POST,
#      measured once at the start; every ratio below is against it;
#   then for each engine in ENGINES (default "sled fjall", `store.backend`):
#   2. flowhook, durability "sync" (and "relaxed" with RELAXED=1, the default): ~700-byte BIK
#      webhooks, fresh message ids, one rule matching a tenth of them (its follow-ups go to the
#      ceiling server); disk bytes per message of the sync run;
#   3. flowhook "sync" again after PRELOAD (default 1,000,000) stored messages
#      (examples/preload.rs: 3 statuses each, indexed callback data, a quarter with an action):
#      throughput, RSS just after opening and after the run, disk bytes per message;
#   4. on that store: kill -9 while the service takes webhooks, then the time from starting
#      `flowhook serve` to /healthz answering;
#   5. with LAG=1 (the default), for the engines in LAG_ENGINES (default "fjall"): the lag from
#      webhook accepted to follow-up received by a local target at LAG_RATE/s.
# (examples/long_message.rs and examples/sled_floor.rs are no longer run here.)
# wrk: 1 thread, 64 connections, DURATION seconds; flowhook and the ceiling get 1 HTTP worker.
# Prints a table and writes it, with the machine, to bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
PRELOAD=${PRELOAD:-1000000}
ENGINES=${ENGINES:-"sled fjall"}
RELAXED=${RELAXED:-1}
LAG=${LAG:-1}
LAG_ENGINES=${LAG_ENGINES:-fjall}
LAG_RATE=${LAG_RATE:-2000}
LAG_SECONDS=${LAG_SECONDS:-20}
OPEN_TIMEOUT=${OPEN_TIMEOUT:-300}
FLOWHOOK_PORT=18090
CEILING_PORT=18099
MOCK_PORT=18098
export BIK_KEY=bench-key

if ! command -v wrk >/dev/null; then
    sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
echo "building release binaries..."
nice -n 5 cargo build --release --quiet --bin flowhook --example ceiling --example preload --example followup_lag

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -s "$work/flowhook.log" ]; then
        echo "--- last lines of the flowhook logs:" >&2
        tail -n 20 "$work/flowhook.log" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

config() { # name store mode
    flowhook_config "$work/$1.toml" "$FLOWHOOK_PORT" "$2" "$3" 1 "$MOCK_PORT" "[[rules]]
name = \"tenth\"
on = \"status\"
statuses = [\"delivered\"]
when = { \"callback.campaign\" = \"abandoned_cart\" }
action = \"http.post\"
params = { url = \"http://127.0.0.1:$CEILING_PORT/hook\", body = { order = \"{{callback.order_id}}\" } }"
    echo "$work/$1.toml"
}

# The engine of every flowhook and preload started below (`store.backend`).
engine=sled
spawn_flowhook() { # config
    FLOWHOOK__STORE__BACKEND=$engine ./target/release/flowhook --config "$1" serve \
        2>>"$work/flowhook.log" &
    flowhook_pid=$!
    pids+=("$flowhook_pid")
}

start_flowhook() { # config
    spawn_flowhook "$1"
    wait_up "http://127.0.0.1:$FLOWHOOK_PORT/healthz"
}

# start_flowhook_timed CONFIG: starts flowhook and sets OPEN_SECONDS to the seconds until
# /healthz answers (up to OPEN_TIMEOUT), or to "failed" if it exits or does not answer in time.
start_flowhook_timed() {
    local t0; t0=$(date +%s.%N)
    spawn_flowhook "$1"
    if wait_up_for "http://127.0.0.1:$FLOWHOOK_PORT/healthz" "$OPEN_TIMEOUT" "$flowhook_pid"; then
        OPEN_SECONDS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
    else
        OPEN_SECONDS=failed
    fi
}

stop_flowhook() {
    kill -TERM "$flowhook_pid" 2>/dev/null || true; wait "$flowhook_pid" 2>/dev/null || true
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

declare -A RPS P50 P99 ERR REQS
measure() { # name url
    local out="$work/${1//\//-}.wrk"
    wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/bik-status.lua "$2" > "$out"
    RPS[$1]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out")
    P50[$1]=$(awk '$1=="50%" {print $2}' "$out")
    P99[$1]=$(awk '$1=="99%" {print $2}' "$out")
    REQS[$1]=$(awk '/requests in/ {print $1}' "$out")
    ERR[$1]=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {n+=1} END {print n+0}' "$out")
    printf '%-28s %8s req/s  p50 %8s  p99 %8s  errors %s\n' "$1" "${RPS[$1]}" "${P50[$1]}" "${P99[$1]}" "${ERR[$1]}"
}

./target/release/examples/ceiling "$CEILING_PORT" 1 & pids+=($!)
wait_up "http://127.0.0.1:$CEILING_PORT/" POST

measure ceiling "http://127.0.0.1:$CEILING_PORT"

declare -A DISK_PER_MSG PRELOAD_OUT RSS_OPEN RSS_READS RSS_BIG DISK_BIG_PER_MSG BIG_MSGS OPEN_CLEAN OPEN_KILL \
    KILL_REQS LAG_OUT RSS_LAG
runs=(ceiling)
for engine in $ENGINES; do
    echo "=== $engine"
    modes=(sync); [ "$RELAXED" = 1 ] && modes+=(relaxed)
    for mode in "${modes[@]}"; do
        store="$work/store-$engine-$mode"
        start_flowhook "$(config "$mode" "$store" "$mode")"
        measure "$engine/$mode" "http://127.0.0.1:$FLOWHOOK_PORT"
        runs+=("$engine/$mode")
        stop_flowhook
    done
    DISK_PER_MSG[$engine]=$(( $(du -sb "$work/store-$engine-sync" | cut -f1) / REQS[$engine/sync] ))
    rm -rf "$work/store-$engine-sync" "$work/store-$engine-relaxed"

    echo "preloading $PRELOAD messages ($engine)..."
    big="$work/store-$engine-big"
    PRELOAD_OUT[$engine]=$(FLOWHOOK__STORE__BACKEND=$engine \
        ./target/release/examples/preload "$big" "$PRELOAD" 2>"$work/preload-$engine.log")
    echo "${PRELOAD_OUT[$engine]}"
    cfg=$(config sync "$big" sync)
    start_flowhook_timed "$cfg"; OPEN_CLEAN[$engine]=$OPEN_SECONDS
    [ "${OPEN_CLEAN[$engine]}" = failed ] && { echo "flowhook did not open the preloaded $engine store" >&2; exit 1; }
    RSS_OPEN[$engine]=$(rss_mb "$flowhook_pid")
    # 2,000 reads of random preloaded messages (the status API), then the RSS.
    for _ in $(seq 1 2000); do
        printf 'http://127.0.0.1:%s/v1/messages/wamid.PRELOAD%09d\n' "$FLOWHOOK_PORT" \
            $(( (RANDOM * 32768 + RANDOM) % PRELOAD ))
    done | xargs -P4 -I{} curl -s -o /dev/null -H 'Authorization: Bearer bench-token' {}
    RSS_READS[$engine]=$(rss_mb "$flowhook_pid")
    measure "$engine/sync_after_preload" "http://127.0.0.1:$FLOWHOOK_PORT"
    runs+=("$engine/sync_after_preload")
    RSS_BIG[$engine]=$(rss_mb "$flowhook_pid")
    stop_flowhook
    BIG_MSGS[$engine]=$(( PRELOAD + REQS[$engine/sync_after_preload] ))
    DISK_BIG_PER_MSG[$engine]=$(( $(du -sb "$big" | cut -f1) / BIG_MSGS[$engine] ))

    # kill -9 while it takes webhooks, 2 s into a 4 s wrk run; then time the next open.
    start_flowhook "$cfg"
    wrk -t1 -c64 -d4s -s bench/bik-status.lua "http://127.0.0.1:$FLOWHOOK_PORT" > "$work/kill.wrk" &
    wrk_pid=$!
    sleep 2
    kill -KILL "$flowhook_pid"; wait "$flowhook_pid" 2>/dev/null || true
    wait "$wrk_pid" || true
    KILL_REQS[$engine]=$(awk '/requests in/ {print $1}' "$work/kill.wrk")
    echo "--- reopening after kill -9 ($engine)" >>"$work/flowhook.log"
    start_flowhook_timed "$cfg"; OPEN_KILL[$engine]=$OPEN_SECONDS
    echo "open after kill -9: ${OPEN_KILL[$engine]} s (clean open: ${OPEN_CLEAN[$engine]} s)"
    stop_flowhook
    rm -rf "$big"

    if [ "$LAG" = 1 ] && [[ " $LAG_ENGINES " == *" $engine "* ]]; then
        start_flowhook "$(config sync "$work/store-$engine-lag" sync)"
        LAG_OUT[$engine]=$(FLOWHOOK_URL="http://127.0.0.1:$FLOWHOOK_PORT" MOCK_PORT=$MOCK_PORT \
            ./target/release/examples/followup_lag "$LAG_RATE" "$LAG_SECONDS")
        RSS_LAG[$engine]=$(rss_mb "$flowhook_pid")
        stop_flowhook
        echo "${LAG_OUT[$engine]}"
        rm -rf "$work/store-$engine-lag"
    fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
ms() { # a wrk latency (412.00us, 6.57ms, 1.02s) in ms
    awk -v v="$1" 'BEGIN {n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; print n}'
}
verdict() { [ "$1" = 1 ] && echo met || echo "not met"; }

{
    echo "# flowhook benchmark"
    echo
    echo "Run: $(date -u +%Y-%m-%dT%H:%M:%SZ) by \`bench/run.sh\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)') (ENGINES=\"$ENGINES\", DURATION=$DURATION s, PRELOAD=$PRELOAD)."
    echo
    echo "Machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(rustc --version)."
    echo "wrk: 1 thread, 64 connections; the servers: 1 HTTP worker each; all on the same cores."
    echo "Every ratio is against the one ceiling run at the start of this run."
    echo
    echo "| engine | run | req/s | p50 | p99 | errors | vs ceiling |"
    echo "|---|---|---|---|---|---|---|"
    for name in "${runs[@]}"; do
        if [ "$name" = ceiling ]; then eng="actix (bare)"; run=ceiling; else eng=${name%%/*}; run=${name#*/}; fi
        echo "| $eng | $run | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${ERR[$name]} | $(ratio "${RPS[$name]}" "${RPS[ceiling]}") |"
    done
    echo
    echo "| engine | RSS after opening the $PRELOAD-message store | after 2,000 reads | RSS after the sync run on it | disk per message there | disk per message, sync run (1 status each) | open after kill -9 | clean open | preload |"
    echo "|---|---|---|---|---|---|---|---|"
    for engine in $ENGINES; do
        echo "| $engine | ${RSS_OPEN[$engine]} MB | ${RSS_READS[$engine]} MB | ${RSS_BIG[$engine]} MB (after ${REQS[$engine/sync_after_preload]} webhooks) | ${DISK_BIG_PER_MSG[$engine]} B (${BIG_MSGS[$engine]} messages) | ${DISK_PER_MSG[$engine]} B | ${OPEN_KILL[$engine]} s (killed during a webhook load; ${KILL_REQS[$engine]} requests sent) | ${OPEN_CLEAN[$engine]} s | $(sed -E 's/^preloaded //' <<<"${PRELOAD_OUT[$engine]}") |"
    done
    for engine in $ENGINES; do
        if [ -n "${LAG_OUT[$engine]:-}" ]; then
            echo
            echo "- $engine, follow-up $(grep -E '^lag' <<<"${LAG_OUT[$engine]}" || echo "lag: not measured") at $LAG_RATE/s (RSS during the lag run: ${RSS_LAG[$engine]} MB)."
            echo "  $(grep -E '^webhooks' <<<"${LAG_OUT[$engine]}")"
        fi
    done
    echo
    echo "| engine | target | goal | measured | |"
    echo "|---|---|---|---|---|"
    for engine in $ENGINES; do
        r=$(ratio "${RPS[$engine/sync]}" "${RPS[ceiling]}")
        p99=$(ms "${P99[$engine/sync]}")
        if [ "$engine" = fjall ]; then
            ok=$(awk -v r="$r" -v p="$p99" 'BEGIN {print (r >= 0.35 && p <= 10) ? 1 : 0}')
            echo "| fjall | durable ingest | >= 0.35x ceiling, p99 <= 10 ms | ${r}x, p99 ${P99[fjall/sync]} | $(verdict "$ok") |"
            ok=$(awk -v a="${RSS_OPEN[fjall]}" -v b="${RSS_READS[fjall]}" 'BEGIN {print (a <= 100 && b <= 100) ? 1 : 0}')
            echo "| fjall | RSS at $PRELOAD messages, after opening and after 2,000 reads | <= 100 MB | ${RSS_OPEN[fjall]} / ${RSS_READS[fjall]} MB (${RSS_BIG[fjall]} MB after the write run) | $(verdict "$ok") |"
            ok=$(( DISK_BIG_PER_MSG[fjall] <= 1000 ? 1 : 0 ))
            echo "| fjall | disk at $PRELOAD messages | <= 1,000 B per message | ${DISK_BIG_PER_MSG[fjall]} B | $(verdict "$ok") |"
            ok=$(awk -v t="${OPEN_KILL[fjall]}" 'BEGIN {print (t != "failed" && t <= 5) ? 1 : 0}')
            echo "| fjall | open after kill -9 at $PRELOAD messages | <= 5 s | ${OPEN_KILL[fjall]} s | $(verdict "$ok") |"
        else
            ok=$(awk -v r="$r" 'BEGIN {print (r >= 0.15) ? 1 : 0}')
            [ "$engine" = sled ] && echo "| sled | durable ingest | >= 0.15x ceiling | ${r}x, p99 ${P99[$engine/sync]} | $(verdict "$ok") |"
            echo "| $engine | RSS / disk / open after kill -9 at $PRELOAD messages | report | ${RSS_OPEN[$engine]} / ${RSS_BIG[$engine]} MB, ${DISK_BIG_PER_MSG[$engine]} B, ${OPEN_KILL[$engine]} s | |"
        fi
    done
    # Hand-written analysis below the marker survives a new run.
    if [ -f bench/results.md ] && grep -q '^<!-- notes -->' bench/results.md; then
        echo
        sed -n '/^<!-- notes -->/,$p' bench/results.md
    fi
} > "$work/results.md"
mv "$work/results.md" bench/results.md
echo
cat bench/results.md | sed '/^<!-- notes -->/q'
