#!/usr/bin/env bash
# OpenAPI conformance: runs schemathesis (PyPI, pinned in deploy/lib.sh) with
# every check against the real webhook-registry binary, which it builds,
# then starts on a free port against a fresh database and a NATS prefix of
# its own, with a token from `webhook-registry token create` and
# DELIVERY_ALLOW_PRIVATE_TARGETS=true. Fails when schemathesis reports a
# failure or the run takes longer than SCHEMATHESIS_TIMEOUT seconds. The
# process, the database and the streams go away on exit.
#
#   deploy/schemathesis.sh                  # what deploy/test.sh runs
#   deploy/schemathesis.sh --seed 42        # extra arguments go to schemathesis
#   SCHEMATHESIS_MAX_EXAMPLES=200 deploy/schemathesis.sh
#
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-20}"
TIMEOUT="${SCHEMATHESIS_TIMEOUT:-240}"

ensure_rust
ensure_backing_services
ensure_test_database_url
st="$(ensure_schemathesis)"

log "cargo build --workspace --bins"
cargo build -q --workspace --bins
bin="$(cargo_target_dir)/debug/webhook-registry"
[ -x "$bin" ] || die "$bin not found after the build"

scratch_begin schemathesis
work="$SCRATCH_WORK"
port="$(free_port)"
export REGISTRY_BIND="127.0.0.1:$port"
export REGISTRY_WORKERS=1
export DELIVERY_ALLOW_PRIVATE_TARGETS=true
export RUST_LOG="${RUST_LOG:-info}"

"$bin" migrate 2>>"$work/registry.log" || die "webhook-registry migrate failed"
token="$("$bin" token create --name schemathesis 2>>"$work/registry.log")" ||
    die "webhook-registry token create failed"

scratch_spawn registry "$bin"
base="http://127.0.0.1:$port"
scratch_wait_ready "$base/readyz"

log "schemathesis run $base/openapi.json --checks all --max-examples $MAX_EXAMPLES (at most ${TIMEOUT}s)"
started=$SECONDS
status=0
# From the scratch directory: nothing is written into the repository.
# POST /webhooks/{id}/test is left out: it POSTs to the webhook's URL, and
# generated URLs name hosts all over the internet; traffic stays on this
# machine (the endpoint's own tests run against local receivers).
# use_after_free is left out: DELETE /webhooks/{id}/jobs/{job_id} cancels a
# job, which stays readable as `cancelled` (docs/webhook-registry.md), and the
# check wants a 404 after any DELETE; that a deleted webhook answers 404 is
# the API tests' (webhooks::delete_is_204_and_takes_the_deliveries).
# Its settings (deploy/schemathesis.toml), found in the directory it runs in.
cp "$BEDOLAGA_REPO_ROOT/deploy/schemathesis.toml" "$work/schemathesis.toml"
(cd "$work" && timeout --kill-after=10 "$TIMEOUT" "$st" run "$base/openapi.json" \
    --checks all \
    --exclude-checks use_after_free \
    --exclude-path '/webhooks/{webhook_id}/test' \
    --header "Authorization: Bearer $token" \
    --workers 1 \
    --max-examples "$MAX_EXAMPLES" \
    --request-timeout 10 \
    --generation-database none \
    --no-color \
    "$@") || status=$?
case "$status" in
    0) log "schemathesis passed in $((SECONDS - started))s" ;;
    124 | 137) die "schemathesis did not finish within ${TIMEOUT}s" ;;
    *) die "schemathesis reported failures (exit $status) after $((SECONDS - started))s" ;;
esac
