#!/usr/bin/env bash
# The Postgres backend beside sled, in one run on one machine:
#   1. the ceiling (examples/ceiling.rs) and flowhook on sled, durability "sync", as in run.sh;
#   2. one flowhook instance on Postgres;
#   3. two flowhook instances on the same database, each driven by its own wrk (half the
#      connections each): their req/s summed, the worse p99;
#   4. the lag from webhook accepted to follow-up received at LAG_RATE webhooks/s, through
#      one Postgres instance (examples/followup_lag.rs);
# and where the time goes: the CPU seconds flowhook and Postgres used during each run, and
# flowhook's own timing of its database work (flowhook_db_duration_seconds).
#
# Postgres is a throwaway cluster of Debian's package (installed if missing) with its durable
# defaults (fsync, synchronous_commit on): a 200 means committed, as with sled's "sync".
# Everything shares this machine's cores; the figures are ratios to the ceiling measured now.
# Writes the Postgres section of bench/results.md (between its <!-- postgres --> markers).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
LAG_RATE=${LAG_RATE:-1000}
LAG_SECONDS=${LAG_SECONDS:-15}
PG_PORT=${PG_PORT:-55439}
CEILING_PORT=18099
MOCK_PORT=18098
A_PORT=18090
B_PORT=18091
export BIK_KEY=bench-key

sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
if ! command -v wrk >/dev/null; then
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
echo "building release binaries..."
cargo build --release --quiet --bin flowhook --example ceiling --example followup_lag

work=$(mktemp -d /tmp/flowhook-bench.XXXXXX)
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$work"
    as=(runuser -u postgres --)
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${as[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

"${as[@]}" "$pgbin/initdb" -D "$work/pg" -U flowhook -A trust >/dev/null
"${as[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start -o \
    "-p $PG_PORT -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c max_connections=100 \
     -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on" >/dev/null
postmaster=$(head -n 1 "$work/pg/postmaster.pid")
PG_VERSION=$("$pgbin/postgres" --version | awk '{print $3}')
psql_admin() { "$pgbin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U flowhook -d postgres -c "$1" >/dev/null; }
# Where Postgres spends its time in database $1: the statements by total time, with their
# mean planning and execution times (pg_stat_statements).
top_statements() {
    "$pgbin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U flowhook -d "$1" -At -F ' | ' -c "
        SELECT calls,
               round((total_plan_time / greatest(calls, 1))::numeric, 3),
               round((total_exec_time / greatest(calls, 1))::numeric, 3),
               round(((total_plan_time + total_exec_time) / 1000)::numeric, 2),
               left(regexp_replace(query, '\s+', ' ', 'g'), 70)
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$1')
        ORDER BY total_plan_time + total_exec_time DESC LIMIT 6" | sed 's/^/| /; s/$/ |/'
}

# Rows written per table in database $1 (pg_stat_user_tables): inserts, updates, how many of
# those were HOT (no index touched), dead rows left; and how often each index was scanned.
table_stats() {
    "$pgbin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U flowhook -d "$1" -At -F ' | ' -c "
        SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup
        FROM pg_stat_user_tables WHERE relname NOT LIKE '\_sqlx%' ORDER BY relname" |
        sed 's/^/| /; s/$/ |/'
}
index_stats() {
    "$pgbin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U flowhook -d "$1" -At -F ' | ' -c "
        SELECT relname, indexrelname, idx_scan FROM pg_stat_user_indexes
        WHERE relname NOT LIKE '\_sqlx%' ORDER BY relname, indexrelname" |
        sed 's/^/| /; s/$/ |/'
}

config() { # name port backend-or-store [database]
    local extra=""
    if [ "$3" = postgres ]; then
        extra="[store.postgres]
url = \"postgres://flowhook@127.0.0.1:$PG_PORT/$4\"
max_connections = 16"
    fi
    flowhook_config "$work/$1.toml" "$2" "$work/store-$1" sync 1 "$MOCK_PORT" "$extra"
    if [ "$3" = postgres ]; then
        sed -i 's/^durability = "sync"$/durability = "sync"\nbackend = "postgres"/' "$work/$1.toml"
    fi
    echo "$work/$1.toml"
}

start() { # config port
    ./target/release/flowhook --config "$1" serve 2>>"$work/flowhook.log" &
    pids+=($!)
    last_pid=$!
    wait_up "http://127.0.0.1:$2/healthz"
}

stop() { # pid...
    for pid in "$@"; do kill -TERM "$pid"; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# CPU seconds (user + system) of a process, and of the postmaster's children (the backends).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pg_ticks() { local t=0; for p in $(pgrep -P "$postmaster"); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
secs() { awk -v t="$1" -v hz="$hz" 'BEGIN {printf "%.1f", t/hz}'; }

# Mean of flowhook_db_duration_seconds{op=...} on a running instance.
db_mean_ms() { # port op
    curl -s "http://127.0.0.1:$1/metrics" | awk -v op="op=\"$2\"" '
        index($0, "flowhook_db_duration_seconds_sum{") == 1 && index($0, op) { s = $2 }
        index($0, "flowhook_db_duration_seconds_count{") == 1 && index($0, op) { c = $2 }
        END { if (c > 0) printf "%.2f", s / c * 1000; else print "-" }'
}

declare -A RPS P50 P99 ERR CPU_FH CPU_PG
wrk_run() { # out url connections
    wrk -t1 -c"$3" -d"${DURATION}s" --latency -s bench/bik-status.lua "$2" > "$1"
}
field() { # file what
    case $2 in
        rps) awk '/Requests\/sec/ {printf "%.0f", $2}' "$1" ;;
        p50) awk '$1=="50%" {print $2}' "$1" ;;
        p99) awk '$1=="99%" {print $2}' "$1" ;;
        err) awk '/Non-2xx/ {n+=$NF} /Socket errors/ {n+=1} END {print n+0}' "$1" ;;
    esac
}
show() {
    printf '%-16s %8s req/s  p50 %8s  p99 %8s  errors %s  cpu flowhook %ss postgres %ss\n' \
        "$1" "${RPS[$1]}" "${P50[$1]}" "${P99[$1]}" "${ERR[$1]}" "${CPU_FH[$1]:--}" "${CPU_PG[$1]:--}"
}

./target/release/examples/ceiling "$CEILING_PORT" 1 & pids+=($!)
wait_up "http://127.0.0.1:$CEILING_PORT/" POST
wrk_run "$work/ceiling.wrk" "http://127.0.0.1:$CEILING_PORT" 64
for f in rps p50 p99 err; do v=$(field "$work/ceiling.wrk" $f); case $f in rps) RPS[ceiling]=$v;; p50) P50[ceiling]=$v;; p99) P99[ceiling]=$v;; err) ERR[ceiling]=$v;; esac; done
show ceiling

record() { # name wrk-file...
    local name=$1; shift
    local rps=0 p99="" err=0
    for f in "$@"; do
        rps=$((rps + $(field "$f" rps)))
        err=$((err + $(field "$f" err)))
        p99="$p99 $(field "$f" p99)"
    done
    RPS[$name]=$rps; ERR[$name]=$err
    P50[$name]=$(field "$1" p50)
    # The worse p99 (wrk prints units; compare in ms).
    P99[$name]=$(for v in $p99; do echo "$v"; done | awk '
        /us$/ {v = $0 + 0; ms = v / 1000} /ms$/ {ms = $0 + 0} /[0-9]s$/ && !/ms$/ && !/us$/ {ms = ($0 + 0) * 1000}
        ms > worst {worst = ms; text = $0} END {print text}')
}

# sled, sync.
start "$(config sled "$A_PORT" sled)" "$A_PORT"; sled_pid=$last_pid
t0=$(ticks "$sled_pid")
wrk_run "$work/sled.wrk" "http://127.0.0.1:$A_PORT" 64
CPU_FH[sled]=$(secs $(( $(ticks "$sled_pid") - t0 )))
record sled "$work/sled.wrk"; show sled
stop "$sled_pid"

# One instance on Postgres.
psql_admin "CREATE DATABASE one"
"$pgbin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U flowhook -d one -c "CREATE EXTENSION pg_stat_statements" >/dev/null
start "$(config pg1 "$A_PORT" postgres one)" "$A_PORT"; a=$last_pid
t0=$(ticks "$a"); p0=$(pg_ticks)
wrk_run "$work/pg1.wrk" "http://127.0.0.1:$A_PORT" 64
CPU_FH[pg1]=$(secs $(( $(ticks "$a") - t0 ))); CPU_PG[pg1]=$(secs $(( $(pg_ticks) - p0 )))
DB_INGEST_1=$(db_mean_ms "$A_PORT" ingest)
BATCH_ONE=$(curl -s "http://127.0.0.1:$A_PORT/metrics" | awk '
    /^flowhook_write_batch_size_sum/ { s = $2 } /^flowhook_write_batch_size_count/ { c = $2 }
    END { if (c > 0) printf "%.1f", s / c; else print "-" }')
TOP=$(top_statements one)
record pg1 "$work/pg1.wrk"; show pg1
stop "$a"

# Two instances on one database, a wrk each.
psql_admin "CREATE DATABASE two"
start "$(config pg2a "$A_PORT" postgres two)" "$A_PORT"; a=$last_pid
start "$(config pg2b "$B_PORT" postgres two)" "$B_PORT"; b=$last_pid
t0=$(( $(ticks "$a") + $(ticks "$b") )); p0=$(pg_ticks)
WRK_TAG=a wrk_run "$work/pg2a.wrk" "http://127.0.0.1:$A_PORT" 32 &
w=$!
WRK_TAG=b wrk_run "$work/pg2b.wrk" "http://127.0.0.1:$B_PORT" 32
wait "$w"
CPU_FH[pg2]=$(secs $(( $(ticks "$a") + $(ticks "$b") - t0 ))); CPU_PG[pg2]=$(secs $(( $(pg_ticks) - p0 )))
DB_INGEST_2=$(db_mean_ms "$A_PORT" ingest)
CONFLICTS=$(curl -s "http://127.0.0.1:$A_PORT/metrics" "http://127.0.0.1:$B_PORT/metrics" |
    awk '/^flowhook_db_conflicts_total/ {n += $2} END {print n + 0}')
record pg2 "$work/pg2a.wrk" "$work/pg2b.wrk"; show pg2
stop "$a" "$b"

# Follow-up lag through Postgres.
psql_admin "CREATE DATABASE lag"
start "$(config lag "$A_PORT" postgres lag)" "$A_PORT"; a=$last_pid
LAG_OUT=$(FLOWHOOK_URL="http://127.0.0.1:$A_PORT" MOCK_PORT=$MOCK_PORT \
    ./target/release/examples/followup_lag "$LAG_RATE" "$LAG_SECONDS")
DB_CLAIM=$(db_mean_ms "$A_PORT" claim)
DB_COMPLETE=$(db_mean_ms "$A_PORT" complete)
BATCH_MEAN=$(curl -s "http://127.0.0.1:$A_PORT/metrics" | awk '
    /^flowhook_write_batch_size_sum/ { s = $2 } /^flowhook_write_batch_size_count/ { c = $2 }
    END { if (c > 0) printf "%.1f", s / c; else print "-" }')
stop "$a"
echo "$LAG_OUT"
lag_line=$(grep -E '^lag' <<<"$LAG_OUT" || echo "lag: not measured")
TABLES=$(table_stats lag)
INDEXES=$(index_stats lag)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
section=$(
    echo "<!-- postgres -->"
    echo "## Postgres backend (bench/postgres.sh)"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'):" \
        "$(nproc) cores, Postgres $PG_VERSION on the same machine (fsync and synchronous_commit" \
        "on), every flowhook with 1 HTTP worker and \`store.durability = \"sync\"\`; wrk 1 thread," \
        "64 connections (32 per instance with two), ${DURATION} s. CPU is user + system seconds" \
        "during the run, of flowhook and of the Postgres backends."
    echo
    echo "| run | req/s | p50 | p99 | errors | vs ceiling | CPU flowhook | CPU Postgres |"
    echo "|---|---|---|---|---|---|---|---|"
    for name in ceiling sled pg1 pg2; do
        echo "| $name | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${ERR[$name]} | $(ratio "${RPS[$name]}" "${RPS[ceiling]}") | ${CPU_FH[$name]:--} | ${CPU_PG[$name]:--} |"
    done
    echo
    echo "- Mean time of the ingest transaction (flowhook_db_duration_seconds{op=\"ingest\"}):" \
        "$DB_INGEST_1 ms with one instance, $DB_INGEST_2 ms with two; transactions run again after" \
        "losing a race between the instances: $CONFLICTS."
    echo "- Postgres's time in the one-instance run, by statement (pg_stat_statements; ms are means):"
    echo
    echo "| calls | plan ms | exec ms | total s | statement |"
    echo "|---|---|---|---|---|"
    echo "$TOP"
    echo
    echo "- Follow-up lag through Postgres at $LAG_RATE webhooks/s: $lag_line. Claim" \
        "transaction $DB_CLAIM ms, recording outcomes $DB_COMPLETE ms (means)."
    echo "- Group commit: $BATCH_ONE requests per ingest transaction on average in the one-instance run," \
        "$BATCH_MEAN in the lag run (flowhook_write_batch_size)."
    echo "- Rows by table after the lag run (its actions were claimed and recorded; pg_stat_user_tables):"
    echo
    echo "| table | inserted | updated | of which HOT | dead |"
    echo "|---|---|---|---|---|"
    echo "$TABLES"
    echo
    echo "- Index scans in the lag run (pg_stat_user_indexes):"
    echo
    echo "| table | index | scans |"
    echo "|---|---|---|"
    echo "$INDEXES"
    echo "<!-- /postgres -->"
)
echo
echo "$section"
if grep -q '<!-- postgres -->' bench/results.md; then
    awk -v section="$section" '
        /<!-- postgres -->/ {print section; skip = 1; next}
        /<!-- \/postgres -->/ {skip = 0; next}
        !skip {print}' bench/results.md > "$work/results.md"
    cat "$work/results.md" > bench/results.md
else
    printf '\n%s\n' "$section" >> bench/results.md
fi
echo "wrote the Postgres section of bench/results.md"
