#!/usr/bin/env bash
# Quick ingest figure: BIK status webhooks per second into one release instance, sync and
# relaxed durability, 64 connections, 1 wrk thread, 15 s each. The full benchmark (ceiling,
# 1M stored messages, follow-up lag) is bench/run.sh's job.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
source bench/lib.sh
cargo build --release --quiet
port=18090
for mode in sync relaxed; do
  store=$(mktemp -d)
  FLOWHOOK__STORE__PATH="$store" FLOWHOOK__STORE__DURABILITY=$mode FLOWHOOK__SERVER__BIND=127.0.0.1:$port \
    FLOWHOOK__SERVER__WORKERS=1 FLOWHOOK__LOG__LEVEL=warn ./target/release/flowhook serve &
  pid=$!
  wait_up "http://127.0.0.1:$port/healthz"
  echo "== durability=$mode"
  wrk -t1 -c64 -d15s --latency -s bench/bik-status.lua "http://127.0.0.1:$port" | grep -E 'Requests/sec|50%|99%|Non-2xx|Socket errors' || true
  kill -TERM $pid; wait $pid || true
  echo "disk: $(du -sb "$store" | cut -f1) bytes"
  rm -rf "$store"
done
