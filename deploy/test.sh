#!/usr/bin/env bash
# Run the test suite: makes sure PostgreSQL (127.0.0.1:5432) and NATS with
# JetStream (127.0.0.1:4222) are installed and running, and that the tests
# have a PostgreSQL role of their own that may create databases
# (bedolaga_events_test, its password in .local/postgres/; a TEST_DATABASE_URL
# in the environment is used instead) and exports TEST_NATS_URL (default the
# NATS above), then runs `cargo test --workspace`
# with any extra arguments passed through, e.g.
#   deploy/test.sh -p webhook-registry
#   deploy/test.sh -- --nocapture
# then pytest for the Python client (clients/python, against the same
# PostgreSQL and NATS and the outbox-relay binary), promtool on the
# Prometheus files (deploy/validate-observability.sh), deploy/schemathesis.sh
# (the OpenAPI conformance run), deploy/portal-test.sh (the portal's
# browser suite) and the offline checks of the deploy files
# (deploy/validate-compose.sh, deploy/validate-k8s.sh, deploy/check-env.sh),
# each also when an earlier step failed; the exit status is non-zero when
# any failed.
#
#   deploy/test.sh --e2e [FILTER...]
# instead runs only the end-to-end fault and cluster tests (crates/e2e,
# with iptables installed for the blackhole test):
# builds webhook-registry, delivery-worker and gateway (debug), then runs
# the e2e tests one at a time against those binaries. They start their own
# nats-server processes and a private PostgreSQL (initdb/pg_ctl), and use
# the machine's PostgreSQL (through the same test role) and NATS beside
# them. E2E_TIMEOUT (seconds,
# default 900) bounds the run.
#
#   deploy/test.sh --containers
# instead runs deploy/containers-test.sh: Docker (docker.io, debootstrap and
# dockerd, installed and started when missing), the stand-in base images,
# the image from deploy/Dockerfile, docker-compose.yml and the overlay for
# a running bot (deploy/beside-bot/), each driven end to end.
# CARGO_TARGET_DIR is honoured when set.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

if [ "${1:-}" = "--containers" ]; then
    shift
    exec "$(dirname "${BASH_SOURCE[0]}")/containers-test.sh" "$@"
fi

if [ "${1:-}" = "--e2e" ]; then
    shift
    ensure_rust
    ensure_backing_services
    ensure_test_database_url
    ensure_test_nats_url
    ensure_e2e_tools
    bins=(webhook-registry delivery-worker gateway)
    log "cargo build --workspace --bins (for the e2e tests)"
    cargo build -q --workspace --bins
    bin_dir="$(cargo_target_dir)/debug"
    for b in "${bins[@]}"; do
        [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found after the build"
    done
    log "cargo test -p e2e (end to end, against $bin_dir)"
    E2E_BIN_DIR="$bin_dir" timeout --kill-after=10 "${E2E_TIMEOUT:-900}" \
        cargo test -p e2e --test e2e -- --ignored --test-threads=1 "$@"
    exit
fi

ensure_rust
ensure_backing_services
ensure_test_database_url
ensure_test_nats_url
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
# The deploy files, offline: the compose schema, the Kubernetes manifests,
# and that every variable they set is one its service accepts.
"$(dirname "${BASH_SOURCE[0]}")/validate-compose.sh" || status=$?
"$(dirname "${BASH_SOURCE[0]}")/validate-k8s.sh" || status=$?
"$(dirname "${BASH_SOURCE[0]}")/check-env.sh" || status=$?
exit "$status"
