#!/usr/bin/env bash
# Soak: RATE webhooks/s (default 2,000) for SECONDS (default 300) against one flowhook
# instance (release build, default workers, durability sync, a rule on every webhook posting
# to a local target). Reports errors and RSS after a warm-up and at the end; passes when
# there are no errors and RSS grew at most 20 B per stored message over the second half
# (growth is also reported from the 30 s mark). It then opens the same store in a fresh
# process and reports that process's idle RSS, which separates memory that grows with the
# stored data (sled keeps per-page state for every node on disk) from memory the long run
# itself held.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
SECONDS_=${SECONDS_:-300}
PORT=18290
MOCK_PORT=18298
cargo build --release --quiet --bin flowhook --example followup_lag
work=$(mktemp -d)
# shellcheck source=bench/lib.sh
source bench/lib.sh
flowhook_config "$work/soak.toml" "$PORT" "$work/store" sync 0 "$MOCK_PORT"
./target/release/flowhook --config "$work/soak.toml" serve 2>"$work/flowhook.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_up "http://127.0.0.1:$PORT/healthz"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
(
    sleep 30
    echo "$(rss)" > "$work/rss-start"
    while kill -0 $pid 2>/dev/null; do echo "$(date +%s) $(rss)" >> "$work/rss-series"; sleep 10; done
) &
out=$(FLOWHOOK_URL="http://127.0.0.1:$PORT" MOCK_PORT=$MOCK_PORT \
    ./target/release/examples/followup_lag "$RATE" "$SECONDS_")
end=$(rss)
start=$(cat "$work/rss-start")
echo "$out"
growth=$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", (e - s) * 100 / s}')
errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$out")
echo "RSS after 30 s: $((start / 1024)) MB; at the end: $((end / 1024)) MB ($growth%)"
echo "RSS every 10 s (KB): $(awk '{print $2}' "$work/rss-series" | xargs)"
# Growth per message stored between the 30 s mark and the end (RATE a second, one message each).
stored=$(( RATE * (SECONDS_ - 30) ))
echo "RSS growth per stored message: $(( (end - start) * 1024 / stored )) bytes ($stored messages stored after the 30 s mark)"
# The same over the second half only: the engine's bounded buffers (memtables, block cache) fill
# in the first minutes; what still grows after that grows with the data.
t0=$(head -1 "$work/rss-series" | cut -d' ' -f1)
read -r half_t half_rss < <(awk -v t0="$t0" -v h="$(( (SECONDS_ - 30) / 2 ))" '$1 - t0 >= h {print $1 - t0, $2; exit}' "$work/rss-series")
half_stored=$(( RATE * (SECONDS_ - 30 - half_t) ))
echo "RSS growth per stored message over the second half: $(( (end - half_rss) * 1024 / half_stored )) bytes ($((half_rss / 1024)) -> $((end / 1024)) MB, $half_stored messages)"
# Which part of the growth is the data: a fresh process opening the same store, idle.
kill -TERM $pid; wait $pid 2>/dev/null || true
./target/release/flowhook --config "$work/soak.toml" serve 2>>"$work/flowhook.log" &
pid=$!
wait_up "http://127.0.0.1:$PORT/healthz"
sleep 5
reopened=$(rss)
echo "RSS of a fresh process opening the same store ($(du -sh "$work/store" | cut -f1) on disk), idle: $((reopened / 1024)) MB;" \
    "the soaked process held $(awk -v e="$end" -v r="$reopened" 'BEGIN {printf "%.0f", (e - r) / 1024}') MB more (negative: less)"
# Pass: no errors, and RSS growth over the second half at most 20 B per stored message (the
# embedded engines issue's bound; the first minutes fill bounded buffers).
half_growth=$(( (end - half_rss) * 1024 / half_stored ))
if [ "$errors" = 0 ] && [ "$half_growth" -le 20 ]; then
    echo "soak: PASS (no errors, RSS growth $half_growth B per message over the second half)"
else
    echo "soak: FAIL (errors $errors, RSS growth $half_growth B per message over the second half)"
    exit 1
fi
