#!/usr/bin/env bash
# Stop the services started by deploy/up.sh (by their recorded pids).
# PostgreSQL and NATS are left running: the tests and other projects use them.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Reverse start order: the worker first, so it stops taking new deliveries.
for s in outbox-relay delivery-worker gateway webhook-registry; do
    stop_service "$s"
done
log "services stopped (PostgreSQL and NATS keep running; logs stay in .local/logs)"
