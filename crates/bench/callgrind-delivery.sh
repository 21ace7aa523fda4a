#!/usr/bin/env bash
# Instructions the delivery worker executes per delivery, by function: runs
#   bench delivery --backlog --events SMALL, then --events LARGE
# with the worker (a child process) under `valgrind --tool=callgrind`, and
# prints (instructions at LARGE - instructions at SMALL) / (LARGE - SMALL),
# which leaves the worker's start-up out, then the TOP (30) functions by
# inclusive instructions per delivery at LARGE.
#
# Instruction counts hardly move with what else the machine runs (two runs
# of one build: 195,681 and 195,838 per delivery), so two worker builds can
# be compared on a busy machine where rates and CPU seconds cannot. They
# are not time: the kernel's work
# (sockets, scheduling) is not counted, and under valgrind SHA-256 runs
# without the CPU's SHA extensions, so signing weighs more than it does
# natively (`profile-delivery.sh` shows the time).
#
#   crates/bench/callgrind-delivery.sh [WORKER_BIN] [SMALL] [LARGE]
#
# WORKER_BIN defaults to the delivery-worker of $CARGO_TARGET_DIR (or
# target/) release; SMALL and LARGE to 2000 and 8000 events. The list leaves
# out the runtime's frames that hold (nearly) everything. Needs valgrind,
# the release `bench` binary of the same commit (it migrates its database),
# PostgreSQL and NATS (DATABASE_URL, NATS_URL as for `bench delivery`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target="${CARGO_TARGET_DIR:-target}"
bench="$target/release/bench"
worker="$(realpath "${1:-$target/release/delivery-worker}")"
small="${2:-2000}"
large="${3:-8000}"
[ -x "$bench" ] && [ -x "$worker" ] || {
    echo "build first: cargo build --release -p bench -p delivery-worker" >&2
    exit 1
}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
(( large > small )) || { echo "LARGE must be above SMALL" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
total() {
    local events=$1
    # The bench starts the worker with its own arguments and environment.
    cat >"$out/worker.sh" <<EOF
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$events" "$worker" "\$@"
EOF
    chmod +x "$out/worker.sh"
    # Under valgrind the worker runs at about 800 deliveries/s: with the
    # bench's 4,096 messages in flight, deliveries would wait for the
    # webhook's slots longer than DELIVERY_QUEUE_WAIT and be parked as
    # retries, a path the native runs never take.
    "$bench" delivery --backlog --events "$events" --idle-timeout 120 --max-messages 256 \
        --worker-bin "$out/worker.sh" >"$out/bench.$events" 2>&1 || {
        cat "$out/bench.$events" >&2
        exit 1
    }
    grep -E '^(recorded|errors)' "$out/bench.$events" >&2
    awk '/^summary:/ { print $2 }' "$out/callgrind.$events"
}
a=$(total "$small")
b=$(total "$large")
n=$(( large - small ))
echo "instructions per delivery: $(( (b - a) / n )) (($b - $a) / $n)"
echo
echo "== top functions by inclusive instructions per delivery, $large events =="
callgrind_annotate --inclusive=yes --auto=no "$out/callgrind.$large" 2>/dev/null |
    awk -v n="$large" '
        function count(s) { gsub(",", "", s); return s + 0 }
        /PROGRAM TOTALS/ { all = count($1); next }
        all > 0 && $1 ~ /^[0-9,]+$/ && $2 ~ /^\(/ {
            v = count($1)
            if (v > 0.7 * all) next
            name = $0
            sub(/^ *[0-9,]+ \([ 0-9.]+%\) +/, "", name)
            sub(/ \[[^]]*\]$/, "", name)
            sub(/^[^ ]*\//, "", name)
            printf "%10.0f  %s\n", v / n, substr(name, 1, 150)
        }' | head -"${TOP:-30}"
