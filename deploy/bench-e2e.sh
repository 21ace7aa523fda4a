#!/usr/bin/env bash
# The end-to-end latency benchmark (not part of CI) in one command: builds
# the release binaries (bench, outbox-relay, delivery-worker, gateway),
# makes sure PostgreSQL and NATS run and the Python client's virtualenv is
# installed (the bot-like publisher runs in it), then runs
#   bench e2e --python <venv>/bin/python [ARGS...]
# e.g. deploy/bench-e2e.sh --rates 100,500,2000 --duration 10s
# against the machine's PostgreSQL (DATABASE_URL, default the local server
# as postgres) and NATS (NATS_URL). See `bench e2e --help`. Run it on a
# quiet machine, never beside another benchmark. CARGO_TARGET_DIR is
# honoured.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

ensure_rust
ensure_backing_services
venv="$(ensure_python_client_venv)"
log "cargo build --release -p bench -p outbox-relay -p delivery-worker -p gateway"
cargo build -q --release -p bench -p outbox-relay -p delivery-worker -p gateway
exec "$(cargo_target_dir)/release/bench" e2e --python "$venv/bin/python" "$@"
