#!/usr/bin/env bash
# The soak (not part of CI): the built services under a steady load with a
# fault every few minutes, taken in turn from a worker killed with SIGKILL
# (never worker 1), worker 1 paused with SIGSTOP and a database restart (a
# PostgreSQL of its own), against the machine's NATS. It reports the events
# lost (must be 0), duplicate success rows (must be 0), duplicate POSTs
# (same webhook-id answered twice), the counters against the rows, each
# service's RSS and open files at start and end, and worker 1's (which
# lives through the whole run) after every fault; it fails when anything
# was lost or recorded twice.
#
#   deploy/soak.sh [--release]
#
# Settings (environment): SOAK_DURATION (30m), SOAK_RATE (events/s, 300),
# SOAK_FAULT_EVERY (2m), SOAK_PAUSE (how long a worker stays stopped, 15s),
# SOAK_SETTLE (how long deliveries may take to finish after the last event,
# 10m), SOAK_REPORT (a file for the report). Do not run it beside a
# benchmark. CARGO_TARGET_DIR is honoured.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

profile=debug
build=(cargo build -q -p webhook-registry -p delivery-worker -p gateway)
if [ "${1:-}" = "--release" ]; then
    profile=release
    build+=(--release)
fi
ensure_rust
ensure_backing_services
ensure_test_database_url
ensure_test_nats_url
log "${build[*]}"
"${build[@]}"
bin_dir="$(cargo_target_dir)/$profile"
log "soak for ${SOAK_DURATION:-30m} at ${SOAK_RATE:-300} events/s, a fault every ${SOAK_FAULT_EVERY:-2m}"
E2E_BIN_DIR="$bin_dir" cargo test -q -p e2e --test soak -- --ignored --nocapture
