#!/usr/bin/env bash
# The containers, for real (run by `deploy/test.sh --containers`):
#   1. the stand-in base images (deploy/standins.sh), made when missing;
#   2. the image, from the real deploy/Dockerfile (bedolaga-events:local);
#   3. docker-compose.yml: every health check healthy; the one-shot
#      `secrets-key` made the key file and the webhook secret is stored
#      sealed; a webhook created
#      through the API gets an event published by eventctl (in a container)
#      and a WebSocket client gets it too; with three delivery workers, one
#      killed (SIGKILL) while 1,000 events are published, every event has
#      exactly one success row; `down` then `up` keeps the data;
#   4. the overlay for a running bot (deploy/beside-bot/): the stand-in of
#      the bot's own compose file, then both files together; the bot still
#      answers through the edge, /webhooks and /ws (a WebSocket upgrade) and
#      the portal reach our services through it, and an event written to the
#      outbox in the bot's database reaches a webhook and the WebSocket.
# Bounded by CONTAINERS_TEST_SECS (default 2700, the cold image build
# included). Every container, network and volume it made is removed on
# exit; images stay, so the next run reuses them and Docker's layer cache.
# Traffic stays between the test's containers and loopback.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

if [ -z "${CONTAINERS_TEST_INNER:-}" ]; then
    export CONTAINERS_TEST_INNER=1
    exec timeout --kill-after=30 "${CONTAINERS_TEST_SECS:-2700}" "$0" "$@"
fi

ensure_docker
command -v curl >/dev/null 2>&1 || apt_install curl
"$BEDOLAGA_REPO_ROOT/deploy/standins.sh"

ID="bedolaga-ct-$(python3 -c 'import uuid; print(uuid.uuid4().hex[:10])')"
STACK="$ID-stack"
BESIDE="$ID-bot"
WORK="$(mktemp -d /var/tmp/bedolaga-ct.XXXXXX)"
TOKEN="ct_$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export WEB_API_DEFAULT_TOKEN="$TOKEN"
BOT_DIR="$WORK/bot"

# The test's own receiver, on the stack's network (the stand-in bot answers
# and counts POSTs).
cat >"$WORK/receiver.yml" <<'EOF'
services:
  receiver:
    image: bedolaga-standin/bot:local
EOF

# The two compose projects: the stack with the receiver, and the bot with
# our overlay (BOT_ALONE: the bot's file only). Arrays, so that `timeout`
# can run them too.
DC=(docker compose -p "$STACK" -f docker-compose.yml -f "$WORK/receiver.yml")
BOT_ALONE=(docker compose -p "$BESIDE" --project-directory "$BOT_DIR" -f "$BOT_DIR/docker-compose.yml")
BC=("${BOT_ALONE[@]}" -f "$BOT_DIR/docker-compose.events.yml")
dc() { "${DC[@]}" "$@"; }
bc() { "${BC[@]}" "$@"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ]; then
        warn "containers test failed (exit $status); the services' last log lines:"
        dc logs --no-color --tail 30 >&2 2>/dev/null || true
        if [ -f "$BOT_DIR/docker-compose.events.yml" ]; then
            bc logs --no-color --tail 30 >&2 2>/dev/null || true
        fi
    fi
    dc down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || warn "could not remove the stack $STACK"
    # The bot's project with whichever files it was started from.
    if [ -f "$BOT_DIR/docker-compose.events.yml" ]; then
        bc down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || warn "could not remove $BESIDE"
    elif [ -f "$BOT_DIR/docker-compose.yml" ]; then
        "${BOT_ALONE[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 ||
            warn "could not remove $BESIDE"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the image ---------------------------------------------------------------
log "docker build -f deploy/Dockerfile -t bedolaga-events:local . (legacy builder)"
t0=$SECONDS
docker_build -f deploy/Dockerfile -t bedolaga-events:local . || die "the image did not build"
log "image built in $((SECONDS - t0)) s; size $(docker image inspect -f '{{.Size}}' bedolaga-events:local | awk '{printf "%.1f MB", $1 / 1e6}')"
# The builder stage gets a tag (a cached no-op), so that pruning the
# untagged images earlier builds left (GBs each) keeps the cargo-chef layer.
docker_build --target builder -f deploy/Dockerfile -t bedolaga-events:build-cache . ||
    die "tagging the builder stage failed"
docker image prune -f >/dev/null

# ---- helpers -----------------------------------------------------------------
# api METHOD URL [JSON]: the response body; fails on a non-2xx answer.
api() {
    local args=(-fsS -X "$1" -H "Authorization: Bearer $TOKEN" --max-time 10)
    [ "$#" -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
    curl "${args[@]}" "$2"
}
# json EXPR: evaluates a Python expression on the JSON read from stdin (as d).
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# wait_for DESCRIPTION SECONDS COMMAND...: COMMAND until it succeeds.
wait_for() {
    local what="$1" secs="$2"
    shift 2
    wait_until "$what" "$secs" "$@" || die "timed out after ${secs}s waiting for $what"
}

# ---- 3. docker-compose.yml ------------------------------------------------------
export REGISTRY_PORT GATEWAY_PORT
REGISTRY_PORT="$(free_port)"
GATEWAY_PORT="$(free_port)"
export POSTGRES_PASSWORD="ct_$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
export DELIVERY_ALLOW_PRIVATE_TARGETS=true
REG="http://127.0.0.1:$REGISTRY_PORT"

log "docker compose up: the stack ($STACK), registry on $REG"
t0=$SECONDS
dc up -d --no-build --wait --wait-timeout 300 >/dev/null 2>&1 || {
    dc ps -a >&2
    die "the stack did not become healthy"
}
log "stack healthy in $((SECONDS - t0)) s"
unhealthy="$(dc ps --format '{{.Service}} {{.Health}}' | awk '$2 != "" && $2 != "healthy"')"
[ -z "$unhealthy" ] || die "not healthy: $unhealthy"
for s in webhook-registry gateway delivery-worker postgres; do
    [ "$(dc ps --format '{{.Health}}' "$s" | head -1)" = "healthy" ] || die "$s has no healthy health check"
done

# stack_sql QUERY: one value from the stack's database.
stack_sql() { dc exec -T postgres psql -U postgres -d bedolaga_events -tAc "$1"; }
# successes OP N: the stack's success rows compare so with N (e.g. -ge 10).
successes() { [ "$(stack_sql "SELECT count(*) FROM webhook_deliveries WHERE status = 'success'")" "$1" "$2" ]; }

hook="$(api POST "$REG/webhooks" \
    '{"name":"containers test","url":"http://receiver:8080/hook","event_type":"user.created","secret":"ct-secret-1"}')"
hook_id="$(echo "$hook" | json 'd["id"]')"
log "webhook $hook_id created through the API"
[ "$(dc ps -a --format '{{.State}} {{.ExitCode}}' secrets-key)" = "exited 0" ] ||
    die "the one-shot secrets-key did not complete: $(dc ps -a --format '{{.State}} {{.ExitCode}}' secrets-key)"
[ "$(stack_sql "SELECT secret LIKE 'sealed:v1:%' FROM webhooks WHERE id = $hook_id")" = t ] ||
    die "the webhook's secret is not stored sealed"
log "its secret is stored sealed (the key file from the volume keys)"
sleep 2 # the workers pick the new webhook up from the database's notification

first_id="$(python3 -c 'import uuid; print(uuid.uuid4())')"
dc run --rm --no-deps -T webhook-registry eventctl publish --type user.created --id "$first_id" \
    --payload '{"user_id":1,"telegram_id":100,"username":"first"}' >/dev/null ||
    die "eventctl publish failed"
log "eventctl published $first_id"
wait_for "the first delivery" 60 successes -eq 1
log "the webhook got it"
# The WebSocket client reads the stream from its start through the gateway.
got="$(timeout 60 "${DC[@]}" run --rm --no-deps -T webhook-registry eventctl tail --via-gateway ws://gateway:8081/ws \
    --token "$TOKEN" --since 0 --max 1)" || die "no event over the WebSocket"
echo "$got" | grep "$first_id" >/dev/null || die "the WebSocket client got something else: $got"
log "a WebSocket client got it too"

log "three workers; 1,000 events; one worker killed (SIGKILL) mid-stream"
dc up -d --no-build --no-recreate --scale delivery-worker=3 --wait --wait-timeout 120 >/dev/null 2>&1 ||
    die "could not scale the workers to 3"
# Read whole (no `| head`: a reader that stops early can fail the writer).
mapfile -t workers < <(dc ps -q delivery-worker)
[ "${#workers[@]}" -eq 3 ] || die "expected 3 worker containers, found ${#workers[@]}"
dc run --rm --no-deps -T webhook-registry eventctl simulate --count 1000 --rate 200 --type user.created \
    >"$WORK/simulate.log" 2>&1 &
sim=$!
wait_for "deliveries to start" 60 successes -gt 150
victim="${workers[0]}"
docker kill -s KILL "$victim" >/dev/null
log "killed worker container ${victim:0:12} at $(stack_sql "SELECT count(*) FROM webhook_deliveries WHERE status = 'success'") deliveries"
wait "$sim" || { cat "$WORK/simulate.log" >&2; die "eventctl simulate failed"; }
wait_for "1,001 success rows" 240 successes -ge 1001
sleep 3
successes="$(stack_sql "SELECT count(*) FROM webhook_deliveries WHERE status = 'success'")"
events="$(stack_sql "SELECT count(DISTINCT event_id) FROM webhook_deliveries WHERE status = 'success'")"
doubled="$(stack_sql "SELECT count(*) FROM (SELECT event_id, webhook_id FROM webhook_deliveries WHERE status = 'success' GROUP BY 1, 2 HAVING count(*) > 1) x")"
[ "$successes" -eq 1001 ] && [ "$events" -eq 1001 ] && [ "$doubled" -eq 0 ] ||
    die "expected exactly one success row for each of 1,001 events: $successes rows, $events events, $doubled doubled"
received="$(dc exec -T receiver python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/received").read().decode())')"
log "1,001 events, one success row each; the receiver saw $(echo "$received" | json 'd["distinct"]') distinct messages in $(echo "$received" | json 'd["posts"]') POSTs"

log "docker compose down, then up: the data stays"
dc down --timeout 10 >/dev/null 2>&1
dc up -d --no-build --wait --wait-timeout 300 >/dev/null 2>&1 || die "the stack did not come back"
api GET "$REG/webhooks/$hook_id" | json 'd["name"]' | grep 'containers test' >/dev/null || die "the webhook is gone after down/up"
successes -eq 1001 || die "the delivery history changed after down/up"
dc run --rm --no-deps -T webhook-registry eventctl publish --type user.created \
    --payload '{"user_id":2,"telegram_id":200,"username":"after-restart"}' >/dev/null
wait_for "a delivery after the restart" 60 successes -eq 1002
log "webhook, history and stream survived; delivering again"
dc down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1

# ---- 4. beside a running bot ----------------------------------------------------
mkdir -p "$BOT_DIR"
cp deploy/beside-bot/testdata/docker-compose.yml "$BOT_DIR/docker-compose.yml"
EDGE_PORT="$(free_port)"
cat >"$BOT_DIR/.env" <<EOF
POSTGRES_PASSWORD=ct_$(python3 -c 'import secrets; print(secrets.token_hex(12))')
WEB_API_PORT=$EDGE_PORT
WEB_API_DEFAULT_TOKEN=$TOKEN
BEDOLAGA_EVENTS_SRC=$BEDOLAGA_REPO_ROOT
DELIVERY_ALLOW_PRIVATE_TARGETS=true
EOF
EDGE="http://127.0.0.1:$EDGE_PORT"
log "the bot alone ($BESIDE), its web API on $EDGE"
"${BOT_ALONE[@]}" up -d --wait --wait-timeout 180 >/dev/null 2>&1 || die "the stand-in bot did not start"
cp deploy/beside-bot/docker-compose.events.yml "$BOT_DIR/docker-compose.events.yml"
curl -fsS "$EDGE/health" | json 'd["service"]' | grep -x bot >/dev/null || die "the stand-in bot does not answer"

log "docker compose -f docker-compose.yml -f docker-compose.events.yml up -d"
bc up -d --no-build --wait --wait-timeout 300 >/dev/null 2>&1 || {
    bc ps -a >&2
    die "the overlay did not become healthy"
}
# bot_sql DB QUERY: one value from the bot's PostgreSQL server.
bot_sql() {
    bc exec -T postgres sh -c 'psql -U "$POSTGRES_USER" -d "$1" -tAc "$2"' sh "$1" "$2"
}
[ "$(bot_sql postgres "SELECT count(*) FROM pg_database WHERE datname = 'bedolaga_events'")" = 1 ] ||
    die "no database bedolaga_events on the bot's server"
[ "$(bot_sql remnawave_bot "SELECT to_regclass('public.event_outbox') IS NOT NULL")" = t ] ||
    die "no event_outbox in the bot's database"

# Through the edge: the bot's paths, ours, the portal.
wait_for "the edge" 60 curl -fsS "$EDGE/health"
curl -fsS "$EDGE/health" | json 'd["service"]' | grep -x bot >/dev/null || die "/health is not the bot's through the edge"
curl -fsS "$EDGE/users" | json 'd["items"][0]["username"]' | grep -x alice >/dev/null || die "/users is not the bot's through the edge"
code="$(curl -s -o /dev/null -w '%{http_code}' "$EDGE/webhooks")"
[ "$code" = 401 ] || die "/webhooks without a token through the edge: HTTP $code (want the registry's 401)"
api GET "$EDGE/webhooks" >/dev/null || die "/webhooks with the token through the edge failed"
hook="$(api POST "$EDGE/webhooks" \
    '{"name":"beside the bot","url":"http://bot:8080/hook","event_type":"user.created","secret":"ct-secret-2","body_format":"bot"}')"
beside_hook="$(echo "$hook" | json 'd["id"]')"
[ "$(bot_sql bedolaga_events "SELECT secret LIKE 'sealed:v1:%' FROM webhooks WHERE id = $beside_hook")" = t ] ||
    die "the webhook's secret is not stored sealed beside the bot"
curl -fsS "$EDGE/bedolaga-events/" | grep 'src="portal/app.js"' >/dev/null || die "no portal at /bedolaga-events/"
curl -fsS -o /dev/null "$EDGE/bedolaga-events/portal/app.js" || die "the portal's script does not load through the edge"
curl -fsS -o /dev/null "$EDGE/bedolaga-events/readyz" || die "/bedolaga-events/readyz is not ready"
api GET "$EDGE/bedolaga-events/webhooks/$beside_hook" >/dev/null || die "the API under /bedolaga-events/ does not answer"
code="$(curl -s -o /dev/null -w '%{http_code}' "$EDGE/bedolaga-events")"
[ "$code" = 301 ] || die "/bedolaga-events should redirect to /bedolaga-events/ (HTTP $code)"
# A WebSocket upgrade through the edge, from the host.
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --http1.1 \
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H "Authorization: Bearer $TOKEN" "$EDGE/ws" || true)"
[ "$code" = 101 ] || die "no WebSocket upgrade through the edge (HTTP $code)"
log "through the edge: the bot's /health and /users, our /webhooks, /ws (101) and the portal"

# An event written to the outbox in the bot's database, as the bot's
# package writes it: the relay publishes it, the webhook and a WebSocket
# client through the edge get it.
sleep 2 # the workers pick the new webhook up from the database's notification
ev_id="$(python3 -c 'import uuid; print(uuid.uuid4())')"
bot_sql remnawave_bot "INSERT INTO event_outbox (envelope) VALUES ('{\"id\":\"$ev_id\",\"type\":\"user.created\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"payload\":{\"user_id\":7,\"telegram_id\":700,\"username\":\"Пётр\"}}')" >/dev/null
delivered() { [ "$(bot_sql bedolaga_events "SELECT count(*) FROM webhook_deliveries WHERE status = 'success' AND event_id = '$1'")" = 1 ]; }
wait_for "the outbox event's delivery" 60 delivered "$ev_id"
got="$(timeout 60 "${BC[@]}" run --rm --no-deps -T events-webhook-registry eventctl tail \
    --via-gateway "ws://events-edge:80/ws" --token "$TOKEN" --since 0 --max 1)" ||
    die "no event over the WebSocket through the edge"
echo "$got" | grep "$ev_id" >/dev/null || die "the WebSocket client through the edge got something else: $got"
posts="$(curl -fsS "$EDGE/received" | json 'd["posts"]')"
[ "$posts" -ge 1 ] || die "the webhook's receiver (the stand-in bot) got no POST"
log "the bot's outbox -> relay -> webhook and WebSocket (through the edge)"
log "containers test passed"
