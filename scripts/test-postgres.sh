#!/usr/bin/env bash
# The test suite on a real Postgres: installs Debian's `postgresql` when it is missing, starts a
# throwaway cluster in a temporary directory (stopped and removed on exit), and runs the API
# suite against it (FLOWHOOK_TEST_POSTGRES: each test app gets a database of its own), with the
# tests only Postgres has: several instances on one database, killing one with calls in
# flight, moving data between backends. Extra arguments go to the test binary, e.g.
# `scripts/test-postgres.sh messages::` to run some tests only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The forwarding test that checks signatures with the Standard Webhooks reference library.
source scripts/python-reference.sh

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
port=${FLOWHOOK_TEST_PG_PORT:-55432}
# The default port is in the ephemeral range: a connection the tests before left behind can
# hold it, so without FLOWHOOK_TEST_PG_PORT a few ports above it are tried in turn.
tries=1
[ -z "${FLOWHOOK_TEST_PG_PORT:-}" ] && tries=20
dir=$(mktemp -d /tmp/flowhook-pg.XXXXXX)
# initdb refuses to run as root: the cluster belongs to the postgres user then.
as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
fi
stop() {
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -U flowhook -A trust --no-sync >/dev/null
# fsync off: the cluster is thrown away, and the tests check flowhook, not Postgres's disk.
started=""
for _ in $(seq 1 "$tries"); do
    if "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" >/dev/null; then
        started=1
        break
    fi
    grep -q "Address already in use" "$dir/log" || break
    port=$((port + 1))
done
if [ -z "$started" ]; then
    cat "$dir/log" >&2
    echo "could not start the test cluster (is port $port taken? set FLOWHOOK_TEST_PG_PORT)" >&2
    exit 1
fi
echo "==> Postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (throwaway, $dir)"

export FLOWHOOK_TEST_POSTGRES="postgres://flowhook@127.0.0.1:$port/postgres"
# Left out, being about the embedded engines' own files, and run by the sled and fjall
# passes: damage (damaged files), loss (a log cut short), disk_full (the engine on a full
# tmpfs), upgrade (sled store formats), crash (SIGKILL against the group commit and flush
# interval) and /readyz's free-disk floor (the disk the engine writes to).
cargo test --locked --test api --test metrics -- --include-ignored \
    --skip damage:: --skip loss:: --skip disk_full:: --skip upgrade:: --skip crash:: \
    --skip retention::readyz_reports_a_disk_below_the_floor "$@"
