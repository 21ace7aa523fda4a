#!/usr/bin/env bash
# Run the test suite: makes sure PostgreSQL (127.0.0.1:5432) and NATS with
# JetStream (127.0.0.1:4222) are installed and running, and that the tests
# have a PostgreSQL role of their own that may create databases
# (bedolaga_events_test, its password in .local/postgres/; a TEST_DATABASE_URL
# in the environment is used instead), then runs `cargo test --workspace`
# with any extra arguments passed through, e.g.
#   deploy/test.sh -p webhook-registry
#   deploy/test.sh -- --nocapture
# then pytest for the Python client (clients/python, against the same
# PostgreSQL and NATS and the outbox-relay binary), promtool on the
# Prometheus files (deploy/validate-observability.sh), deploy/schemathesis.sh
# (the OpenAPI conformance run) and deploy/portal-test.sh (the portal's
# browser suite), each also when an earlier step failed; the exit status is
# non-zero when any failed.
# CARGO_TARGET_DIR is honoured when set.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

ensure_rust
ensure_backing_services
ensure_test_database_url
ensure_test_tools
prune_test_streams

status=0
log "cargo test --workspace $*"
cargo test --workspace "$@" || status=$?
# The Python client and the transactional outbox (pytest, see lib.sh).
(run_python_client_tests) || status=$?
# The Prometheus configuration, alert rules and their unit tests (promtool).
"$(dirname "${BASH_SOURCE[0]}")/validate-observability.sh" || status=$?
# The OpenAPI conformance run (schemathesis against the built registry).
"$(dirname "${BASH_SOURCE[0]}")/schemathesis.sh" || status=$?
# The portal in a real browser against the built services.
"$(dirname "${BASH_SOURCE[0]}")/portal-test.sh" || status=$?
exit "$status"
