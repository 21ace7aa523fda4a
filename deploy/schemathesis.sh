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

id="$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
db="schemathesis_${id}"
# The tests' naming (EVENTS_t<uuid>): prune_test_streams removes leftovers.
prefix="t${id}"
work="$(mktemp -d)"
server_pid=""

delete_streams() {
    python3 -c 'import nats' >/dev/null 2>&1 || return 0
    NATS_URL="nats://$NATS_HOST:$NATS_PORT" PREFIX="$prefix" python3 - <<'PY' || true
import asyncio, os
import nats

async def main():
    nc = await nats.connect(os.environ["NATS_URL"])
    try:
        js = nc.jetstream()
        for name in ("EVENTS_", "DEADLETTER_"):
            try:
                await js.delete_stream(name + os.environ["PREFIX"])
            except Exception:
                pass
    finally:
        await nc.close()

asyncio.run(main())
PY
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -s "$work/registry.log" ]; then
        warn "last lines of the registry's log:"
        tail -n 30 "$work/registry.log" >&2 || true
    fi
    test_psql -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
        warn "could not drop database $db"
    delete_streams
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

test_psql -c "CREATE DATABASE \"$db\"" >/dev/null || die "CREATE DATABASE $db failed"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

DATABASE_URL="$(test_database_url "$db")"
export DATABASE_URL
export NATS_URL="nats://$NATS_HOST:$NATS_PORT"
export NATS_PREFIX="$prefix"
export REGISTRY_BIND="127.0.0.1:$port"
export REGISTRY_WORKERS=1
export DELIVERY_ALLOW_PRIVATE_TARGETS=true
export RUST_LOG="${RUST_LOG:-info}"
unset WEB_API_DEFAULT_TOKEN WEB_API_TOKEN_HMAC_SECRET

"$bin" migrate 2>>"$work/registry.log" || die "webhook-registry migrate failed"
token="$("$bin" token create --name schemathesis 2>>"$work/registry.log")" ||
    die "webhook-registry token create failed"

"$bin" >>"$work/registry.log" 2>&1 </dev/null &
server_pid=$!
base="http://127.0.0.1:$port"
wait_until "registry" "$SERVICE_WAIT_SECS" curl -fs -o /dev/null --max-time 2 "$base/readyz" ||
    die "webhook-registry is not ready on $base after ${SERVICE_WAIT_SECS}s"

log "schemathesis run $base/openapi.json --checks all --max-examples $MAX_EXAMPLES (at most ${TIMEOUT}s)"
started=$SECONDS
status=0
# From the scratch directory: nothing is written into the repository.
# POST /webhooks/{id}/test is left out: it POSTs to the webhook's URL, and
# generated URLs name hosts all over the internet; traffic stays on this
# machine (the endpoint's own tests run against local receivers).
(cd "$work" && timeout --kill-after=10 "$TIMEOUT" "$st" run "$base/openapi.json" \
    --checks all \
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
