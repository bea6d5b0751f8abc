#!/usr/bin/env bash
# Where flowhook's CPU goes, per request. flowhook runs pinned to one core (1 HTTP worker,
# durability "sync", log level info as JSON lines, as the container runs it) under wrk
# (bench/bik-status.lua, 1 thread, 64 connections) pinned to another core for DURATION seconds,
# while `perf record` samples the flowhook process with DWARF call graphs (a release build
# keeps no frame pointers). Each sample goes to the bucket of the first frame, from the leaf
# up, that belongs to a known part (`classify` below), so a memcpy or a system call counts
# for whoever made it; a sample with no such frame goes by its thread, or to "other".
# Prints a table of the share of CPU and CPU microseconds per request by bucket, and appends
# it to bench/results.md under the date and commit.
#
# STORE_BACKEND (default sled) is passed on as store.backend. The release binary is built with
# line tables into its own target directory (PROFILE_TARGET_DIR, default target/profile).
# PERF_DATA=<file> keeps the recording there, for `perf report -i <file>`.
# Needs 2 cores, perf and wrk (wrk is installed if missing). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

STORE_BACKEND=${STORE_BACKEND:-sled}
DURATION=${DURATION:-10}
FREQ=${FREQ:-999}
FLOWHOOK_CPU=${FLOWHOOK_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PROFILE_TARGET_DIR=${PROFILE_TARGET_DIR:-target/profile}
PORT=18093
MOCK_PORT=18098 # the config's rule posts there, but the load (delivered statuses) never matches it
export BIK_KEY=bench-key

command -v perf >/dev/null || { echo "perf is needed (linux-perf)" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
    sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
echo "building the release binary with line tables into $PROFILE_TARGET_DIR..."
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR="$PROFILE_TARGET_DIR" \
    nice -n 10 cargo build --release --quiet --bin flowhook
bin="$PROFILE_TARGET_DIR/release/flowhook"

work=$(mktemp -d /tmp/flowhook-profile.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
flowhook_config "$work/flowhook.toml" "$PORT" "$work/store" sync 1 "$MOCK_PORT"
FLOWHOOK__STORE__BACKEND="$STORE_BACKEND" FLOWHOOK__LOG__LEVEL=info FLOWHOOK__LOG__FORMAT=json \
    taskset -c "$FLOWHOOK_CPU" "$bin" --config "$work/flowhook.toml" serve 2>"$work/flowhook.log" &
flowhook_pid=$!
pids+=("$flowhook_pid")
wait_up "http://127.0.0.1:$PORT/healthz"

load() { # tag seconds
    WRK_TAG=$1 taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"$2s" --latency -s bench/bik-status.lua \
        "http://127.0.0.1:$PORT"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
scrape() { curl -sf "http://127.0.0.1:$PORT/metrics" >"$1" || : >"$1"; }
# metric SCRAPE NAME: a sample's value in a scrape (0 if absent).
metric() { awk -v m="$2" '$1 == m {v = $2} END {print v + 0}' "$1"; }

echo "warming up for 2 s..."
load warm 2 >/dev/null
scrape "$work/before.prom"
log_before=$(stat -c %s "$work/flowhook.log")
ticks_before=$(cpu_ticks "$flowhook_pid")
echo "profiling for $DURATION s..."
taskset -c "$LOAD_CPU" perf record -q -F "$FREQ" --call-graph dwarf -p "$flowhook_pid" \
    -o "$work/perf.data" -- sleep "$DURATION" 2>"$work/perf.log" &
perf_pid=$!
load run "$DURATION" >"$work/wrk.out"
if ! kill -0 "$flowhook_pid" 2>/dev/null; then
    echo "flowhook is gone before the end of the run (stopped from outside?); its log ends:" >&2
    tail -n 5 "$work/flowhook.log" >&2
    exit 1
fi
ticks_after=$(cpu_ticks "$flowhook_pid")
log_after=$(stat -c %s "$work/flowhook.log")
scrape "$work/after.prom"
wait "$perf_pid" || { cat "$work/perf.log" >&2; exit 1; }
kill -TERM "$flowhook_pid"; wait "$flowhook_pid" 2>/dev/null || true
[ -n "${PERF_DATA:-}" ] && cp "$work/perf.data" "$PERF_DATA"

requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
errors=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {n+=1} END {print n+0}' "$work/wrk.out")
cpu_seconds=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t/hz}')
us_per_request=$(awk -v s="$cpu_seconds" -v n="$requests" 'BEGIN {printf "%.1f", s*1e6/n}')
log_per_request=$(( (log_after - log_before) / requests ))
# How the writer grouped the requests (the engine's cost per request depends on it).
delta() { awk -v a="$(metric "$work/before.prom" "$1")" -v b="$(metric "$work/after.prom" "$1")" 'BEGIN {print b - a}'; }
batches=$(delta flowhook_write_batch_size_count)
flushes=$(delta flowhook_flush_duration_seconds_count)
grouping=$(awk -v r="$(delta flowhook_write_batch_size_sum)" -v b="$batches" -v f="$flushes" \
    -v fs="$(delta flowhook_flush_duration_seconds_sum)" -v n="$requests" 'BEGIN {
        if (b == 0 || f == 0) { print "no writer metrics"; exit }
        printf "%.1f requests per write transaction, %.1f per flush (%.2f ms per flush)", r / b, n / f, fs * 1000 / f
    }')

echo "classifying the samples..."
# One sample: a "comm tid" line, then its frames from the leaf up ("address symbol"), then a
# blank line.
perf script -i "$work/perf.data" -F comm,tid,ip,sym 2>/dev/null | awk -v us="$us_per_request" '
    # The symbol without the "<", "&" and "mut " an impl or a reference starts with.
    function subject(s) {
        while (s ~ /^(<|&|mut |dyn |const )/) sub(/^(<|&|mut |dyn |const )/, "", s)
        return s
    }
    # The bucket a frame decides, or "" for a frame that does not (std, core, libc, kernel...).
    function classify(sym,   s) {
        s = subject(sym)
        if (s ~ /^(_?mi_|mimalloc|libmimalloc_sys)/) return "allocation"
        if (s ~ /^flowhook::domain::recipient/) return "normalize"
        if (s ~ /^flowhook::providers/) return "verify and parse"
        if (s ~ /^flowhook::(store::(writer|durability)|background)/) return "flush wait / writer overhead"
        if (s ~ /^flowhook::(domain|store|rules)/) return "fold and encode"
        if (s ~ /^flowhook::http/) return "HTTP"
        if (s ~ /^(phonenumber|regex|regex_automata|regex_syntax|regex_cache|nom|aho_corasick)::/) return "normalize"
        if (s ~ /^(hmac|sha2|digest|subtle|base64|hex|serde_json)::/) return "verify and parse"
        if (s ~ /^postcard::/) return "fold and encode"
        if (s ~ /^(sled|fjall|lsm_tree|value_log)::/) return "engine"
        if (s ~ /^(tracing|tracing_core|tracing_subscriber)::/) return "logging"
        if (s ~ /^(metrics|metrics_util|metrics_exporter_prometheus)::/) return "other"
        if (s ~ /^(actix_[a-z_]+|tokio|tokio_util|mio|h2|hyper|http|httparse|bytes|bytestring|futures_util|futures_core|local_channel|local_waker)::/) return "HTTP"
        return ""
    }
    # A sample no frame decided: by its thread.
    function by_thread(comm) {
        if (comm ~ /^flowhook-(writer|flushe)/) return "flush wait / writer overhead"
        if (comm ~ /^sled/) return "engine"
        if (comm ~ /^(actix|tokio)/) return "HTTP"
        return "other"
    }
    function finish() {
        if (comm == "") return
        if (bucket == "") bucket = by_thread(comm)
        count[bucket]++; total++; threads[comm]++
        if (bucket == "other") other_leaf[leaf == "" ? "[none]" : leaf]++
        comm = ""
    }
    /^[^ \t]/ { finish(); comm = $0; sub(/[ \t]+[0-9]+[ \t]*$/, "", comm); bucket = ""; leaf = ""; next }
    /^[ \t]*$/ { finish(); next }
    {
        sym = $0
        sub(/^[ \t]*[0-9a-f]+[ \t]+/, "", sym); sub(/ \(inlined\)$/, "", sym)
        if (leaf == "") leaf = sym
        if (bucket == "") bucket = classify(sym)
    }
    function top(arr, n,   k, best, line, i) {
        line = ""
        for (i = 0; i < n; i++) {
            best = ""
            for (k in arr) if (best == "" || arr[k] > arr[best]) best = k
            if (best == "" || arr[best] == 0) break
            line = line (line == "" ? "" : ", ") sprintf("`%s` %.1f%%", substr(best, 1, 60), 100 * arr[best] / total)
            arr[best] = 0
        }
        return line
    }
    END {
        finish()
        if (total == 0) { print "no samples" > "/dev/stderr"; exit 1 }
        print "| bucket | % of CPU | CPU µs per request |"
        print "|---|---|---|"
        n = split("HTTP|verify and parse|normalize|fold and encode|engine|flush wait / writer overhead|logging|allocation|other", order, "|")
        for (i = 1; i <= n; i++)
            printf "| %s | %.1f | %.1f |\n", order[i], 100 * count[order[i]] / total, us * count[order[i]] / total
        printf "| all | 100.0 | %.1f |\n", us
        print ""
        print "By thread: " top(threads, 6) "."
        print ""
        print "Other, by leaf symbol: " top(other_leaf, 6) "."
        print ""
        print "Samples: " total "."
    }' >"$work/table.md"

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || commit="$commit with uncommitted changes"
{
    echo
    echo "## Hot path profile, $(date -u +%Y-%m-%dT%H:%M:%SZ) at \`$commit\` ($STORE_BACKEND)"
    echo
    echo "\`bench/profile.sh\`: flowhook on CPU $FLOWHOOK_CPU (1 HTTP worker, durability sync, log level info, JSON),"
    echo "wrk -t1 -c64 on CPU $LOAD_CPU, $DURATION s; \`perf record -F $FREQ --call-graph dwarf\` on flowhook."
    echo "$rps req/s, p99 $p99, errors $errors; flowhook used $cpu_seconds s of CPU, $us_per_request µs per request;"
    echo "$log_per_request bytes of log per request; $grouping."
    echo
    cat "$work/table.md"
} | tee -a bench/results.md
