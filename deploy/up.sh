#!/usr/bin/env bash
# Run the whole system locally:
#   PostgreSQL + NATS JetStream (installed and started when missing), a
#   PostgreSQL role and database bedolaga_events of the project's own (the
#   role's password generated into .local/postgres/; the server's
#   configuration is not touched), release build, the key file that seals
#   webhook secrets in the database (.local/secrets.key, made once, unless
#   SECRETS_KEY_FILE names one), migrations, then
#   webhook-registry, gateway and delivery-worker in the background, and
#   outbox-relay too when OUTBOX_DATABASE_URL is set (the bot's database;
#   its event_outbox table is created there when missing).
# Logs and pid files go to .local/ in the repository. Run it again to rebuild
# and restart; deploy/down.sh stops them.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

SERVICES=(webhook-registry gateway delivery-worker)
if [ -n "${OUTBOX_DATABASE_URL:-}" ]; then
    SERVICES+=(outbox-relay)
    export OUTBOX_DATABASE_URL
    export RELAY_AUTO_MIGRATE="${RELAY_AUTO_MIGRATE:-true}"
fi
HEALTH_WAIT_SECS="${HEALTH_WAIT_SECS:-60}"

# ---- configuration (defaults of docs/configuration.md) --------------------
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export REGISTRY_BIND="${REGISTRY_BIND:-127.0.0.1:8080}"
export GATEWAY_BIND="${GATEWAY_BIND:-127.0.0.1:8081}"
export WORKER_BIND="${WORKER_BIND:-127.0.0.1:8082}"
export RELAY_BIND="${RELAY_BIND:-127.0.0.1:8083}"
export RUST_LOG="${RUST_LOG:-info}"
if [ -z "${DELIVERY_ALLOW_PRIVATE_TARGETS:-}" ]; then
    export DELIVERY_ALLOW_PRIVATE_TARGETS=true
    private_note="DELIVERY_ALLOW_PRIVATE_TARGETS=true (local dev default set by up.sh: webhooks may target localhost/private addresses; export DELIVERY_ALLOW_PRIVATE_TARGETS=false to refuse them)"
else
    export DELIVERY_ALLOW_PRIVATE_TARGETS
    private_note="DELIVERY_ALLOW_PRIVATE_TARGETS=$DELIVERY_ALLOW_PRIVATE_TARGETS (from your environment)"
fi

registry_addr="$(bind_to_local "$REGISTRY_BIND")"
gateway_addr="$(bind_to_local "$GATEWAY_BIND")"
worker_addr="$(bind_to_local "$WORKER_BIND")"
relay_addr="$(bind_to_local "$RELAY_BIND")"
# The portal's live view and its readiness table follow the binds above.
export REGISTRY_GATEWAY_URL="${REGISTRY_GATEWAY_URL:-ws://$gateway_addr/ws}"
export REGISTRY_WORKER_READY_URL="${REGISTRY_WORKER_READY_URL:-http://$worker_addr/readyz}"
declare -A HEALTH_URL=(
    [webhook-registry]="http://$registry_addr/healthz"
    [gateway]="http://$gateway_addr/healthz"
    [delivery-worker]="http://$worker_addr/healthz"
    [outbox-relay]="http://$relay_addr/healthz"
)

# ---- backing services ------------------------------------------------------
ensure_rust
command -v curl >/dev/null 2>&1 || apt_install curl

# Without DATABASE_URL: the local PostgreSQL, with a role and database of
# this project's own. With one: used as given (the database must exist);
# the local server is started when the URL points at it.
db_re='^postgres(ql)?://([^@/]*@)?(127\.0\.0\.1|localhost)(:5432)?/'
if [ -z "${DATABASE_URL:-}" ]; then
    ensure_postgres
    DATABASE_URL="$(ensure_local_database)"
    db_line="$DATABASE_URL   (role '$LOCAL_DB_ROLE', password in ${PG_PASSWORD_DIR#"$BEDOLAGA_REPO_ROOT/"}/$LOCAL_DB_ROLE.password)"
elif [[ "$DATABASE_URL" =~ $db_re ]]; then
    ensure_postgres
    db_line="from your environment"
else
    log "DATABASE_URL points elsewhere; not managing a local PostgreSQL (the database must exist)"
    db_line="from your environment"
fi
export DATABASE_URL
nats_re='^nats://(127\.0\.0\.1|localhost)(:4222)?/?$'
if [[ "$NATS_URL" =~ $nats_re ]]; then
    ensure_nats
else
    log "NATS_URL points elsewhere; not managing a local nats-server"
fi

# ---- build -----------------------------------------------------------------
log "cargo build --release --workspace"
cargo build --release --workspace >&2 || die "cargo build failed"
BIN_DIR="$(cargo_target_dir)/release"
for b in webhook-registry gateway delivery-worker outbox-relay eventctl; do
    [ -x "$BIN_DIR/$b" ] || die "binary $BIN_DIR/$b missing after the build"
done

# ---- the key file of secrets at rest -----------------------------------------
# The registry and the worker refuse to start without one. Made once and
# kept: the webhook secrets in the database open only with it.
if [ -z "${SECRETS_KEY_FILE:-}" ]; then
    SECRETS_KEY_FILE="$LOCAL_DIR/secrets.key"
    mkdir -p "$LOCAL_DIR"
    log "webhook-registry secrets new-key --if-missing --file ${SECRETS_KEY_FILE#"$BEDOLAGA_REPO_ROOT/"}"
    key_id="$("$BIN_DIR/webhook-registry" secrets new-key --if-missing --file "$SECRETS_KEY_FILE")" ||
        die "webhook-registry secrets new-key --file $SECRETS_KEY_FILE failed"
    key_note="SECRETS_KEY_FILE=.local/secrets.key (local dev default set by up.sh, newest key $key_id; the webhook secrets in the database open only with it; export SECRETS_KEY_FILE to use your own)"
else
    [ -r "$SECRETS_KEY_FILE" ] || die "SECRETS_KEY_FILE=$SECRETS_KEY_FILE is not a readable file"
    key_note="SECRETS_KEY_FILE=$SECRETS_KEY_FILE (from your environment)"
fi
# Read by the registry and the worker (the gateway and the relay take no key).
export SECRETS_KEY_FILE

# ---- (re)start -------------------------------------------------------------
for s in "${SERVICES[@]}" outbox-relay; do
    stop_service "$s"
done
# Something else (a `cargo run` in another terminal, an old container) may
# still hold a port; the health checks below would then talk to it.
declare -A ADDR=([webhook-registry]="$registry_addr" [gateway]="$gateway_addr" [delivery-worker]="$worker_addr" [outbox-relay]="$relay_addr")
for s in "${SERVICES[@]}"; do
    if tcp_open "${ADDR[$s]}"; then
        die "${ADDR[$s]} (for $s) is already in use by a process up.sh did not start; stop it first"
    fi
done

log "webhook-registry migrate"
"$BIN_DIR/webhook-registry" migrate >&2 || die "webhook-registry migrate failed"

mkdir -p "$LOG_DIR"
for s in "${SERVICES[@]}"; do
    printf '\n==== %s started by up.sh at %s ====\n' "$s" "$(date -u +%FT%TZ)" >>"$LOG_DIR/$s.log"
done
# Migrations ran just above; the registry's own start-up migration is a no-op.
start_service webhook-registry "$BIN_DIR/webhook-registry"
start_service gateway "$BIN_DIR/gateway"
start_service delivery-worker "$BIN_DIR/delivery-worker"
if [ -n "${OUTBOX_DATABASE_URL:-}" ]; then
    start_service outbox-relay "$BIN_DIR/outbox-relay"
fi

service_healthy() {
    local s="$1"
    pid_alive "$s" >/dev/null || return 2
    http_ok "${HEALTH_URL[$s]}"
}
for s in "${SERVICES[@]}"; do
    ok=0
    for ((i = 0; i < HEALTH_WAIT_SECS * 2; i++)); do
        if service_healthy "$s"; then
            ok=1
            break
        fi
        if ! pid_alive "$s" >/dev/null; then
            warn "$s exited during start-up; last lines of $LOG_DIR/$s.log:"
            tail -n 30 "$LOG_DIR/$s.log" >&2 || true
            die "$s did not start"
        fi
        sleep 0.5
    done
    if [ "$ok" -ne 1 ]; then
        warn "last lines of $LOG_DIR/$s.log:"
        tail -n 30 "$LOG_DIR/$s.log" >&2 || true
        die "$s does not answer ${HEALTH_URL[$s]} after ${HEALTH_WAIT_SECS}s (it is still running; deploy/down.sh stops it)"
    fi
    log "$s is up (${HEALTH_URL[$s]})"
done

# ---- API token -------------------------------------------------------------
token_file="$LOCAL_DIR/token"
token_works() {
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
        -H "X-API-Key: $1" "http://$registry_addr/webhooks?limit=1" 2>/dev/null)" || return 1
    [ "$code" = "200" ]
}
token=""
if [ -s "$token_file" ]; then
    token="$(head -n 1 "$token_file" | tr -d '[:space:]')"
    if [ -n "$token" ] && token_works "$token"; then
        log "reusing the API token saved in $token_file"
    else
        log "the token saved in $token_file no longer works; creating a new one"
        token=""
    fi
fi
if [ -z "$token" ]; then
    token="$("$BIN_DIR/webhook-registry" token create --name local-dev \
        --description "created by deploy/up.sh" | head -n 1 | tr -d '[:space:]')" ||
        die "webhook-registry token create failed"
    [ -n "$token" ] || die "webhook-registry token create printed no token"
    (umask 077 && printf '%s\n' "$token" >"$token_file")
    token_works "$token" || die "the new token is rejected by GET http://$registry_addr/webhooks"
    log "created API token 'local-dev' (saved in $token_file)"
fi

# ---- summary (stdout) ------------------------------------------------------
cat <<EOF

bedolaga-events is running.

  Portal (webhook-registry)    http://$registry_addr/   (sign in with the API token below)
  REST API (webhook-registry)  http://$registry_addr/webhooks
  WebSocket (gateway)          ws://$gateway_addr/ws?token=$token
  Live console (gateway)       http://$gateway_addr/
  Worker metrics               http://$worker_addr/metrics
$(if [ -n "${OUTBOX_DATABASE_URL:-}" ]; then echo "  Outbox relay metrics         http://$relay_addr/metrics"; else echo "  Outbox relay                 not started (set OUTBOX_DATABASE_URL to the bot's database)"; fi)

  API token                    $token   (saved in .local/token)
  DATABASE_URL                 $db_line
  $private_note
  $key_note

  Logs: .local/logs/<service>.log    Stop: deploy/down.sh

Try it:
  curl -sS -H "X-API-Key: $token" -H 'Content-Type: application/json' \\
       -d '{"name":"demo","url":"http://127.0.0.1:9000/hook","event_type":"user.created"}' \\
       http://$registry_addr/webhooks
  $BIN_DIR/eventctl publish --type user.created --payload '{"user_id":1}'
EOF

# The edge rules for an nginx already in front of the bot's web API: the
# same routes as deploy/beside-bot/edge.conf, to these addresses.
cat <<EOF

In front of the bot (one base URL for admin tools), add to the nginx server
block that proxies the bot's web API (deploy/beside-bot/edge.conf has the
whole file; replace BOT_ADDRESS with the bot's, e.g. 127.0.0.1:8080 if the
bot's port moves):
  location = /ws {
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
      proxy_pass http://$gateway_addr;
  }
  location /webhooks { proxy_pass http://$registry_addr; }
  location = /bedolaga-events { return 301 /bedolaga-events/; }
  location /bedolaga-events/ { proxy_pass http://$registry_addr/; }
  location / { proxy_pass http://BOT_ADDRESS; }
EOF
