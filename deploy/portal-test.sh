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

scratch_begin portal
work="$SCRATCH_WORK"
registry_port="$(free_port)"
gateway_port="$(free_port)"
worker_port="$(free_port)"

export REGISTRY_BIND="127.0.0.1:$registry_port"
export GATEWAY_BIND="127.0.0.1:$gateway_port"
export WORKER_BIND="127.0.0.1:$worker_port"
export REGISTRY_GATEWAY_URL="ws://127.0.0.1:$gateway_port/ws"
export REGISTRY_WORKER_READY_URL="http://127.0.0.1:$worker_port/readyz"
export REGISTRY_WORKERS=1 GATEWAY_WORKERS=1
export DELIVERY_ALLOW_PRIVATE_TARGETS=true
# The suite's receiver fails on purpose; an opened circuit would hold the
# retries it then clicks for (the circuit's badge is seeded with SQL).
export DELIVERY_CIRCUIT_THRESHOLD=1000000
export RUST_LOG="${RUST_LOG:-info}"
unset DELIVERY_RETRY_SCHEDULE

"$bin/webhook-registry" migrate 2>>"$work/registry.log" || die "webhook-registry migrate failed"
token="$("$bin/webhook-registry" token create --name portal-test 2>>"$work/registry.log")" ||
    die "webhook-registry token create failed"

scratch_spawn registry "$bin/webhook-registry"
scratch_spawn gateway "$bin/gateway"
# No automatic retries: a failed attempt stays failed until the portal
# retries it.
scratch_spawn worker "$bin/delivery-worker" --retry-schedule=
scratch_wait_ready "http://$REGISTRY_BIND/readyz" "http://$GATEWAY_BIND/readyz" "http://$WORKER_BIND/readyz"

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
