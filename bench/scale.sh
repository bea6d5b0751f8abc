#!/usr/bin/env bash
# An embedded engine at scale (default fjall, 10,000,000 messages): preloads SCALE messages
# (examples/preload.rs: 3 statuses each, indexed callback data, a quarter with a delivered
# follow-up), then reports the RSS just after opening the store and after 2,000 reads of random
# stored messages, the disk per message, and durable ingest on it against the same ingest on an
# empty store measured in the same run (wrk: 1 thread, 64 connections, DURATION s; flowhook: 1
# HTTP worker), both right after the load and once the load's compaction is done (the process
# idle). Prints the figures and appends them to bench/results.md.
# Needs about 600 B of disk per message (6 GB at 10M) and takes ~10 minutes at 10M here.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10000000}
DURATION=${DURATION:-10}
ENGINE=${ENGINE:-fjall}
PORT=18390
MOCK_PORT=18398
export BIK_KEY=bench-key FLOWHOOK__STORE__BACKEND=$ENGINE
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
nice -n 5 cargo build --release --quiet --bin flowhook --example preload
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
serve() { # store
    flowhook_config "$work/c.toml" "$PORT" "$1" sync 1 "$MOCK_PORT"
    ./target/release/flowhook --config "$work/c.toml" serve 2>>"$work/flowhook.log" &
    pid=$!
    wait_up "http://127.0.0.1:$PORT/healthz"
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
ingest() { # name -> req/s, p99
    wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/bik-status.lua "http://127.0.0.1:$PORT" > "$work/$1.wrk"
    echo "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/$1.wrk") $(awk '$1=="99%" {print $2}' "$work/$1.wrk")"
}

serve "$work/empty"
read -r EMPTY_RPS EMPTY_P99 <<<"$(ingest empty)"
stop
echo "$ENGINE, empty store: $EMPTY_RPS req/s, p99 $EMPTY_P99"

echo "preloading $SCALE messages ($ENGINE)..."
started=$(date +%s)
PRELOAD_OUT=$(./target/release/examples/preload "$work/big" "$SCALE" 2>/dev/null | tail -1)
PRELOAD_S=$(( $(date +%s) - started ))
echo "$PRELOAD_OUT"
DISK=$(du -sb "$work/big" | cut -f1)
started=$(date +%s.%N)
serve "$work/big"
OPEN_S=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')
RSS_OPEN=$(rss_mb "$pid")
for _ in $(seq 1 2000); do
    printf 'http://127.0.0.1:%s/v1/messages/wamid.PRELOAD%09d\n' "$PORT" $(( (RANDOM * 32768 + RANDOM) % SCALE ))
done | xargs -P4 -I{} curl -s -o /dev/null -w '%{http_code}\n' -H 'Authorization: Bearer bench-token' {} > "$work/reads"
FOUND=$(grep -c '^200$' "$work/reads" || true)
RSS_READS=$(rss_mb "$pid")
read -r BIG_RPS BIG_P99 <<<"$(ingest big)"
RSS_AFTER=$(rss_mb "$pid")
# The preload writes SCALE messages in minutes, and its compaction runs on long after; a store
# that grew over days has none pending. Wait until the process idles (under 5% of a core over
# 10 s, at most SETTLE_MAX s), then measure again.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
settle_started=$(date +%s)
before=$(cpu_ticks)
while sleep 10; do
    now=$(cpu_ticks)
    [ $(( now - before )) -lt 50 ] && break
    [ $(( $(date +%s) - settle_started )) -ge "${SETTLE_MAX:-900}" ] && break
    before=$now
done
SETTLE_S=$(( $(date +%s) - settle_started ))
read -r SETTLED_RPS SETTLED_P99 <<<"$(ingest settled)"
stop
RATIO=$(awk -v a="$BIG_RPS" -v b="$EMPTY_RPS" 'BEGIN {printf "%.0f", a * 100 / b}')
SETTLED_RATIO=$(awk -v a="$SETTLED_RPS" -v b="$EMPTY_RPS" 'BEGIN {printf "%.0f", a * 100 / b}')
{
    echo
    echo "## $ENGINE at $SCALE messages (\`bench/scale.sh\`, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD))"
    echo
    echo "| figure | measured | goal |"
    echo "|---|---|---|"
    echo "| preload | $PRELOAD_S s ($PRELOAD_OUT) | |"
    echo "| disk per message | $(( DISK / SCALE )) B | |"
    echo "| open (start to /healthz) | $OPEN_S s | |"
    echo "| RSS after opening / after 2,000 reads ($FOUND found) | $RSS_OPEN / $RSS_READS MB | <= 150 MB |"
    echo "| durable ingest on it right after the load vs an empty store, same run | $BIG_RPS vs $EMPTY_RPS req/s ($RATIO%), p99 $BIG_P99 vs $EMPTY_P99 | |"
    echo "| RSS after that ingest | $RSS_AFTER MB | |"
    echo "| durable ingest once its compaction is done ($SETTLE_S s idle wait) vs the empty store | $SETTLED_RPS vs $EMPTY_RPS req/s ($SETTLED_RATIO%), p99 $SETTLED_P99 | >= 80% |"
} | tee -a bench/results.md
