#!/usr/bin/env bash
# The portal's browser suite, in Chromium and in Firefox: puppeteer-core
# (npm) driving Debian's chromium (DevTools protocol) and firefox-esr
# (WebDriver BiDi) through the same steps against the real services. Builds
# webhook-registry, gateway, delivery-worker and eventctl, starts them on
# free ports against a fresh database and a NATS prefix of their own, then
# runs crates/webhook-registry/tests/portal/portal.test.mjs once per browser
# (one after the other, against the same services): it signs in, manages a
# webhook pointing at a local receiver, follows its deliveries and the live
# stream, and writes a screenshot of each page to
# PORTAL_TEST_OUT/<browser>/ (default: <target dir>/portal-test). Installs
# chromium and firefox-esr (apt) and puppeteer-core (npm ci from the suite's
# package-lock.json, next to the target directory) when missing. Fails when
# the suite fails in either browser. The processes, the database and the
# streams go away on exit.
#
#   deploy/portal-test.sh                            # what deploy/test.sh runs
#   PORTAL_TEST_OUT=/tmp/shots deploy/portal-test.sh
#   PORTAL_BROWSERS=firefox deploy/portal-test.sh    # one browser only
#
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

TIMEOUT="${PORTAL_TEST_TIMEOUT:-300}"
BROWSERS="${PORTAL_BROWSERS:-chromium firefox}"

ensure_rust
ensure_backing_services
ensure_test_database_url
for browser in $BROWSERS; do
    case "$browser" in
        chromium | firefox) ;;
        *) die "PORTAL_BROWSERS: unknown browser '$browser' (chromium, firefox)" ;;
    esac
done
ensure_portal_test_tools
pp_dir="$(puppeteer_dir)"
target="$(cargo_target_dir)"
out="${PORTAL_TEST_OUT:-$target/portal-test}"

log "cargo build --workspace --bins"
cargo build -q --workspace --bins
bin="$target/debug"
for b in webhook-registry gateway delivery-worker eventctl; do
    [ -x "$bin/$b" ] || die "$bin/$b not found after the build"
done

id="$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
db="portal_${id}"
# The tests' naming (EVENTS_t<uuid>): prune_test_streams removes leftovers.
prefix="t${id}"
work="$(mktemp -d)"
pids=()

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

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
    local status=$? pid s
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for s in registry gateway worker; do
            if [ -s "$work/$s.log" ]; then
                warn "last lines of the $s log:"
                tail -n 20 "$work/$s.log" >&2 || true
            fi
        done
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
registry_port="$(free_port)"
gateway_port="$(free_port)"
worker_port="$(free_port)"

DATABASE_URL="$(test_database_url "$db")"
export DATABASE_URL
export NATS_URL="nats://$NATS_HOST:$NATS_PORT"
export NATS_PREFIX="$prefix"
export REGISTRY_BIND="127.0.0.1:$registry_port"
export GATEWAY_BIND="127.0.0.1:$gateway_port"
export WORKER_BIND="127.0.0.1:$worker_port"
export REGISTRY_GATEWAY_URL="ws://127.0.0.1:$gateway_port/ws"
export REGISTRY_WORKER_READY_URL="http://127.0.0.1:$worker_port/readyz"
export REGISTRY_WORKERS=1 GATEWAY_WORKERS=1
export DELIVERY_ALLOW_PRIVATE_TARGETS=true
export RUST_LOG="${RUST_LOG:-info}"
unset WEB_API_DEFAULT_TOKEN WEB_API_TOKEN_HMAC_SECRET DELIVERY_RETRY_SCHEDULE

"$bin/webhook-registry" migrate 2>>"$work/registry.log" || die "webhook-registry migrate failed"
token="$("$bin/webhook-registry" token create --name portal-test 2>>"$work/registry.log")" ||
    die "webhook-registry token create failed"

"$bin/webhook-registry" >>"$work/registry.log" 2>&1 </dev/null &
pids+=($!)
"$bin/gateway" >>"$work/gateway.log" 2>&1 </dev/null &
pids+=($!)
# No automatic retries: a failed attempt stays failed until the portal
# retries it.
"$bin/delivery-worker" --retry-schedule= >>"$work/worker.log" 2>&1 </dev/null &
pids+=($!)
for url in "http://$REGISTRY_BIND/readyz" "http://$GATEWAY_BIND/readyz" "http://$WORKER_BIND/readyz"; do
    wait_until "$url" "$SERVICE_WAIT_SECS" curl -fs -o /dev/null --max-time 2 "$url" ||
        die "$url is not ready after ${SERVICE_WAIT_SECS}s"
done

failed=()
for browser in $BROWSERS; do
    case "$browser" in
        chromium) browser_bin="$(command -v chromium)" ;;
        firefox) browser_bin="$(command -v firefox-esr)" ;;
    esac
    shots="$out/$browser"
    mkdir -p "$shots"
    rm -f "$shots"/*.png
    log "portal browser suite in $browser against http://$REGISTRY_BIND/ (screenshots in $shots)"
    started=$SECONDS
    status=0
    PORTAL_URL="http://$REGISTRY_BIND/" PORTAL_TOKEN="$token" PORTAL_OUT="$shots" \
        PORTAL_BROWSER="$browser" PORTAL_BROWSER_BIN="$browser_bin" PUPPETEER_DIR="$pp_dir" \
        EVENTCTL="$bin/eventctl" \
        timeout --kill-after=10 "$TIMEOUT" node crates/webhook-registry/tests/portal/portal.test.mjs || status=$?
    case "$status" in
        0) log "portal browser suite passed in $browser in $((SECONDS - started))s; screenshots in $shots" ;;
        124 | 137)
            warn "the portal browser suite did not finish in $browser within ${TIMEOUT}s"
            failed+=("$browser")
            ;;
        *)
            warn "the portal browser suite failed in $browser (exit $status) after $((SECONDS - started))s; screenshots in $shots"
            failed+=("$browser")
            ;;
    esac
done
[ "${#failed[@]}" -eq 0 ] || die "the portal browser suite failed in: ${failed[*]}"
