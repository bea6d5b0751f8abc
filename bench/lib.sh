# Shared by the bench scripts (sourced).

# wait_up URL [METHOD]: waits up to 10 s for a 2xx, else fails the script.
wait_up() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null -X "${2:-GET}" "$1" && return 0
        sleep 0.1
    done
    echo "not up: $1" >&2
    exit 1
}

# flowhook_config FILE PORT STORE DURABILITY WORKERS MOCK_PORT [EXTRA_TOML]
# A benchmark config: key "bench-key", token "bench-token", an http.post target without a rate
# limit and with 256 calls in flight (a slot is held until the outcome is on disk), and a
# rule posting {"message": id} to 127.0.0.1:MOCK_PORT/hook for every `read` status (the lag
# rule). WORKERS 0 means one per core. EXTRA_TOML (e.g. more [[rules]]) is appended.
flowhook_config() {
    cat > "$1" <<TOML
[server]
bind = "127.0.0.1:$2"
workers = $5
[store]
path = "$3"
durability = "$4"
[api]
token = "bench-token"
[providers.bik]
basic_auth = ["bench-key"]
[targets.http]
max_in_flight = 256
rate_per_second = 0
[log]
level = "warn"
[[rules]]
name = "lag"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:$6/hook", body = { message = "{{message_id}}" } }
${7:-}
TOML
}

# wait_up_for URL SECONDS [PID]: waits up to SECONDS for a 2xx from a GET, polling every 50 ms;
# fails (returns 1, without exiting) on timeout or as soon as PID has exited.
wait_up_for() {
    local deadline; deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        curl -sf -o /dev/null "$1" && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            echo "exited before answering: $1" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "not up after $2 s: $1" >&2
    return 1
}

# need_wrk: installs wrk with apt when it is missing.
need_wrk() {
    command -v wrk >/dev/null && return 0
    local sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
}
