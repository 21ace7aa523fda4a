#!/usr/bin/env bash
# Where the CPU of `bench delivery` goes, by process and by function: runs
#   bench delivery ARGS...            (default: --events 100000)
# and, from PERF_DELAY (2) s after it starts, records every process of the machine with
# perf (499 samples/s per core, no call graphs) for PERF_SECONDS (8); then
# prints each process's share of the samples and the TOP (25) functions of
# the delivery worker, PostgreSQL, nats-server and the bench process
# (publisher and receiver). Needs perf (Debian: linux-perf) and root or
# kernel.perf_event_paranoid <= 0; uses the release binaries of
# $CARGO_TARGET_DIR (or target/). Never beside another benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target="${CARGO_TARGET_DIR:-target}"
bench="$target/release/bench"
[ -x "$bench" ] || { echo "build first: cargo build --release -p bench -p delivery-worker" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
[ $# -gt 0 ] || set -- --events 100000
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
RUST_LOG=warn "$bench" delivery "$@" >"$out/bench.txt" 2>&1 &
pid=$!
sleep "${PERF_DELAY:-2}"
perf record -a -F 499 -o "$out/perf.data" -- sleep "${PERF_SECONDS:-8}" >/dev/null 2>&1 &
perf_pid=$!
sleep 1
# Threads of one process share its pid; the processes by name, for the
# breakdown (PostgreSQL's backends are many processes of one name). "idle"
# is pid 0: the share of the time a core had nothing to run.
ps -eo pid=,comm= >"$out/ps.txt"
wait "$perf_pid"
wait "$pid" || { cat "$out/bench.txt"; exit 1; }
cat "$out/bench.txt"
echo
echo "== share of CPU samples by process (perf record -a, ${PERF_SECONDS:-8} s) =="
perf script -i "$out/perf.data" -F pid 2>/dev/null | awk '
    NR == FNR { name[$1] = $2; next }
    $1 == 0 { n["idle"]++; total++; next }
    { n[($1 in name) ? name[$1] : "other"]++; total++ }
    END { for (k in n) printf "%6.1f %%  %s\n", 100 * n[k] / total, k }
' "$out/ps.txt" - | sort -rn | head -12 || true
show() {
    echo
    echo "== top functions of $1 (share of its own samples) =="
    shift
    perf report -i "$out/perf.data" --no-children "$@" --sort dso,sym \
        --percentage relative --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -"${TOP:-25}" || true
}
# By pid: the worker's runtime threads have names of their own.
worker="$(awk '$2 == "delivery-worker" { print $1 }' "$out/ps.txt" | paste -sd, -)"
show "the delivery worker" --pid "${worker:-0}"
show "PostgreSQL" --comms postgres
show "nats-server" --comms nats-server
show "the bench (publisher and receiver)" --pid "$pid"
