#!/usr/bin/env bash
# Fan-out benchmark: the gateway, nginx+nchan and the floor server (one
# write per event per client, `bench fanout-floor`) under the same
# load, in one run (`bench fanout --peer nchan,floor`). Needs the release
# binaries (cargo build --release -p gateway -p bench -p webhook-registry),
# PostgreSQL and NATS running, and `apt-get install nginx libnginx-mod-nchan`.
#
#   crates/gateway/bench/fanout-vs-nchan.sh [CLIENTS] [RATE] [DURATION]
#
# Extra `bench fanout` arguments can be given in BENCH_ARGS. PEERS picks
# the columns beside the gateway's WebSocket (default `nchan,floor`; `sse`
# adds the gateway's own /sse under the same load: PEERS=sse,nchan,floor).
set -euo pipefail

clients=${1:-5000}
rate=${2:-20}
duration=${3:-10s}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/fanout-bench.XXXXXX)
db=gwbench_$$
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export NATS_PREFIX=gwbench$$
ulimit -n 20000

cleanup() {
    [[ -n ${gw_pid:-} ]] && kill "$gw_pid" 2>/dev/null || true
    [[ -n ${floor_pid:-} ]] && kill "$floor_pid" 2>/dev/null || true
    [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    sleep 1
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

module=$(dpkg -L libnginx-mod-nchan | grep 'nchan.*\.so$' | head -1)
cat >"$work/nginx.conf" <<EOF
load_module $module;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $work;
    server {
        listen 127.0.0.1:8090;
        location = /pub { nchan_publisher; nchan_channel_id events; nchan_message_buffer_length 100; }
        location = /sub { nchan_subscriber websocket; nchan_channel_id events; }
    }
}
EOF
nginx -c "$work/nginx.conf"
sleep 0.5
master=$(cat "$work/nginx.pid")
nginx_pids=$master,$(pgrep -d, -P "$master")

psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
"$bin/webhook-registry" migrate >/dev/null
token=$("$bin/webhook-registry" token create --name bench 2>/dev/null)

# both with their defaults: one worker per core
RUST_LOG=warn "$bin/gateway" &
gw_pid=$!
for _ in $(seq 50); do
    curl -sf http://127.0.0.1:8081/readyz >/dev/null && break
    sleep 0.2
done

# the floor: as many writer threads as nginx has workers (one per core)
"$bin/bench" fanout-floor --listen 127.0.0.1:8092 &
floor_pid=$!

if [[ -n ${PERF_OUT:-} ]]; then
    # profile the gateway while its run publishes
    (sleep "${PERF_DELAY:-8}"; perf record -g -p "$gw_pid" -o "$PERF_OUT" -- sleep "${PERF_SECS:-5}" >/dev/null 2>&1) &
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%FT%TZ)"
"$bin/bench" fanout --token "$token" --clients "$clients" --rate "$rate" \
    --duration "$duration" --gateway-pid "$gw_pid" \
    --peer "${PEERS:-nchan,floor}" --peer-pids "$nginx_pids" --floor-pids "$floor_pid" ${BENCH_ARGS:-}
