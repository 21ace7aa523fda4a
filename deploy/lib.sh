#!/usr/bin/env bash
# Shared helpers for deploy/up.sh, deploy/down.sh, deploy/test.sh and .ci/run.
#
# Source it:   . "$(dirname "$0")/lib.sh"
# Or run one function directly (handy for checks):  deploy/lib.sh ensure_nats
#
# Every ensure_* function is idempotent: it does nothing when the thing is
# already there and answering. Messages go to stderr; stdout stays clean for
# whatever the calling script prints.
set -euo pipefail

BEDOLAGA_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Where the local services are expected. The services' own defaults
# (docs/configuration.md) point here, and so do the tests.
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
NATS_HOST="${NATS_HOST:-127.0.0.1}"
NATS_PORT="${NATS_PORT:-4222}"
# Bounded waits, in seconds.
SERVICE_WAIT_SECS="${SERVICE_WAIT_SECS:-30}"

export DEBIAN_FRONTEND=noninteractive

log() { printf '[bedolaga] %s\n' "$*" >&2; }
warn() { printf '[bedolaga] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[bedolaga] ERROR: %s\n' "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root: directly when we are root, through passwordless sudo
# otherwise, or fail with the command the user should run.
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "this step needs root: $*  (run it as root, or run this script as root)"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install these packages by hand: $*"
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
    log "apt-get install -y $*"
    as_root apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

# wait_until DESCRIPTION SECONDS COMMAND...: poll COMMAND once a second.
wait_until() {
    local secs="$2" i # $1 only labels the call site
    shift 2
    for ((i = 0; i < secs; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    "$@" >/dev/null 2>&1
}

# --------------------------------------------------------------------------
# Rust toolchain
# --------------------------------------------------------------------------
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found. Install the Rust toolchain (https://rustup.rs), then run this again."
    command -v rustc >/dev/null 2>&1 ||
        die "rustc not found next to cargo; repair the Rust toolchain (rustup)."
}

# cargo-deny (crates.io) for the dependency policy of deny.toml. Built once
# with `cargo install --locked` into ~/.cargo/bin (several minutes on two
# cores) and kept there; installed again only when that version is missing.
# The build goes to a temporary directory of its own, not CARGO_TARGET_DIR.
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
ensure_cargo_deny() {
    ensure_rust
    if cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
        return 0
    fi
    log "cargo install --locked cargo-deny@$CARGO_DENY_VERSION (several minutes)"
    env -u CARGO_TARGET_DIR cargo install --locked --version "$CARGO_DENY_VERSION" cargo-deny >&2 ||
        die "cargo install cargo-deny failed"
    cargo deny --version >/dev/null 2>&1 || die "cargo deny does not run after installing it"
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }

ensure_postgres_installed() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 &&
        command -v pg_isready >/dev/null 2>&1; then
        return 0
    fi
    log "PostgreSQL is not installed; installing it from Debian's packages"
    apt_install postgresql
}

# Prints "VERSION NAME" of the cluster to use: the one configured on
# $PG_PORT, or nothing when there is none.
pg_cluster_for_port() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }'
}

# Installs, creates and starts a cluster when there is none answering on
# $PG_HOST:$PG_PORT. Its configuration is never changed: logins use roles
# of this project's own (ensure_pg_role below).
ensure_postgres() {
    ensure_postgres_installed
    local cluster ver name
    if pg_ready; then
        log "PostgreSQL is running on $PG_HOST:$PG_PORT"
        return 0
    fi

    cluster="$(pg_cluster_for_port)"
    if [ -z "$cluster" ]; then
        if [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
            die "no PostgreSQL cluster is configured on port $PG_PORT (pg_lsclusters lists others); start one on $PG_HOST:$PG_PORT"
        fi
        # Debian's package normally creates "main"; a package installed with
        # create_main_cluster=false leaves none.
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$ver" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
        log "creating PostgreSQL cluster $ver/main on port $PG_PORT"
        as_root pg_createcluster -p "$PG_PORT" "$ver" main >&2 || die "pg_createcluster $ver main failed"
        cluster="$ver main"
    fi
    read -r ver name <<<"$cluster"
    log "starting PostgreSQL cluster $ver/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 ||
        die "could not start PostgreSQL $ver/$name; see /var/log/postgresql/postgresql-$ver-$name.log"
    wait_until "postgres" "$SERVICE_WAIT_SECS" pg_ready ||
        die "PostgreSQL $ver/$name started but does not answer on $PG_HOST:$PG_PORT after ${SERVICE_WAIT_SECS}s (check listen_addresses in /etc/postgresql/$ver/$name/postgresql.conf)"
    log "PostgreSQL is running on $PG_HOST:$PG_PORT"
}

# Roles and databases of this project. The scripts log in as roles of
# their own, each with a generated password kept in $PG_PASSWORD_DIR (mode
# 600), over TCP: the server's authentication rules are the user's and
# stay as they are (Debian's default takes passwords from 127.0.0.1).
# Creating a role or a database needs the server's administrator, once:
# over TCP as $PG_ADMIN_USER when that works without a prompt (trust,
# ~/.pgpass, PGPASSWORD), otherwise as the `postgres` system user on the
# Unix socket in $PG_SOCKET_DIR (peer authentication), which needs root.
PG_ADMIN_USER="${PG_ADMIN_USER:-postgres}"
PG_SOCKET_DIR="${PG_SOCKET_DIR:-/var/run/postgresql}"
PG_PASSWORD_DIR="${PG_PASSWORD_DIR:-$BEDOLAGA_REPO_ROOT/.local/postgres}"
# The role and database deploy/up.sh runs the services with.
LOCAL_DB_ROLE="${LOCAL_DB_ROLE:-bedolaga_events}"
LOCAL_DB_NAME="${LOCAL_DB_NAME:-bedolaga_events}"
# The role deploy/test.sh runs the tests with: it creates their databases.
TEST_DB_ROLE="${TEST_DB_ROLE:-bedolaga_events_test}"

pg_check_name() {
    [[ "$1" =~ ^[a-z_][a-z0-9_]*$ ]] || die "refusing unusual PostgreSQL name '$1'"
}

# pg_password FILE: prints the password kept in FILE, generating one (48 hex
# digits) when the file is missing.
pg_password() {
    local file="$1" pw
    if [ ! -s "$file" ]; then
        (umask 077 && mkdir -p "$(dirname "$file")" &&
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file" && echo >>"$file") ||
            die "cannot write $file"
    fi
    pw="$(head -n 1 "$file")"
    [[ "$pw" =~ ^[A-Za-z0-9_-]{16,}$ ]] ||
        die "$file does not hold a usable password (16 or more letters, digits, '_' or '-'); delete it to get a new one"
    printf '%s\n' "$pw"
}

# pg_as ROLE PASSWORD PSQL_ARGS...: psql over TCP as ROLE (the password goes
# through the environment, not the command line).
pg_as() {
    local role="$1" pw="$2"
    shift 2
    PGPASSWORD="$pw" psql -h "$PG_HOST" -p "$PG_PORT" -U "$role" -w -X -q -tA -v ON_ERROR_STOP=1 "$@"
}

# pg_admin_psql DATABASE PSQL_ARGS...: psql as the server's administrator
# (see above); SQL on stdin or in -c.
pg_admin_how=""
pg_admin_psql() {
    local db="$1"
    shift
    if [ -z "$pg_admin_how" ]; then
        if psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_ADMIN_USER" -d postgres -w -X -q -tAc 'SELECT 1' >/dev/null 2>&1; then
            pg_admin_how=tcp
        elif id postgres >/dev/null 2>&1 && { is_root || sudo -n true 2>/dev/null; } &&
            (cd / && as_root runuser -u postgres -- psql -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d postgres -X -q -tAc 'SELECT 1') >/dev/null 2>&1; then
            pg_admin_how=socket
        else
            die "cannot log in to PostgreSQL at $PG_HOST:$PG_PORT as an administrator to create this project's role or database: neither as '$PG_ADMIN_USER' over TCP without a password prompt (set PGPASSWORD or ~/.pgpass, or PG_ADMIN_USER) nor as the 'postgres' system user on the socket in $PG_SOCKET_DIR (needs root). Alternatively create them yourself, or point DATABASE_URL / TEST_DATABASE_URL at a database you have"
        fi
    fi
    case "$pg_admin_how" in
        tcp) psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_ADMIN_USER" -d "$db" -w -X -q -v ON_ERROR_STOP=1 "$@" ;;
        *) (cd / && as_root runuser -u postgres -- psql -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d "$db" -X -q -v ON_ERROR_STOP=1 "$@") ;;
    esac
}

# pg_role_state ROLE PASSWORD: "t" or "f" (whether the role may create
# databases) when ROLE logs in with PASSWORD over TCP; nothing otherwise.
pg_role_state() {
    pg_as "$1" "$2" -d postgres -c 'SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user' 2>/dev/null || true
}

# ensure_pg_role ROLE CREATEDB|NOCREATEDB: makes sure ROLE logs in over TCP
# with the password kept in $PG_PASSWORD_DIR/ROLE.password and has the
# given right; prints the password. The administrator is asked only when
# the role is missing, its password differs or the right does.
ensure_pg_role() {
    local role="$1" right="$2" file pw want
    pg_check_name "$role"
    case "$right" in
        CREATEDB) want=t ;;
        NOCREATEDB) want=f ;;
        *) die "ensure_pg_role: CREATEDB or NOCREATEDB, not '$right'" ;;
    esac
    file="$PG_PASSWORD_DIR/$role.password"
    pw="$(pg_password "$file")"
    if [ "$(pg_role_state "$role" "$pw")" != "$want" ]; then
        log "setting up PostgreSQL role '$role' ($right, password in $file)"
        # Another run may create the role at the same moment.
        pg_admin_psql postgres >/dev/null <<SQL || die "could not create or update PostgreSQL role '$role'"
DO \$\$
BEGIN
    CREATE ROLE "$role" LOGIN NOSUPERUSER NOCREATEROLE $right PASSWORD '$pw';
EXCEPTION WHEN duplicate_object THEN
    ALTER ROLE "$role" LOGIN NOSUPERUSER NOCREATEROLE $right PASSWORD '$pw';
END
\$\$;
SQL
        [ "$(pg_role_state "$role" "$pw")" = "$want" ] ||
            die "PostgreSQL role '$role' is set up, but logging in as it with its password at $PG_HOST:$PG_PORT fails: the server's pg_hba.conf must accept password logins (scram-sha-256 or md5) from $PG_HOST, as Debian's default does"
    fi
    printf '%s\n' "$pw"
}

# ensure_local_database: the role and database deploy/up.sh runs the
# services with; prints their DATABASE_URL. A database of that name that
# belongs to another role is left alone (with a way out in the message).
ensure_local_database() {
    local role="$LOCAL_DB_ROLE" db="$LOCAL_DB_NAME" pw owner
    pg_check_name "$db"
    pw="$(ensure_pg_role "$role" NOCREATEDB)"
    owner="$(pg_as "$role" "$pw" -d postgres -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$db'")" ||
        die "cannot query PostgreSQL at $PG_HOST:$PG_PORT as '$role'"
    if [ -z "$owner" ]; then
        log "creating database '$db' owned by '$role'"
        pg_admin_psql postgres -c "CREATE DATABASE \"$db\" OWNER \"$role\"" >/dev/null ||
            die "CREATE DATABASE $db failed"
    elif [ "$owner" = "$role" ]; then
        log "database '$db' exists"
    else
        die "database '$db' exists but belongs to '$owner', not to '$role', so it is left as it is. Keep using it with DATABASE_URL set to a URL of '$owner' (e.g. postgres://$owner@$PG_HOST:$PG_PORT/$db), or drop it (dropdb $db) to start afresh, or choose another name with LOCAL_DB_NAME"
    fi
    printf 'postgres://%s:%s@%s:%s/%s\n' "$role" "$pw" "$PG_HOST" "$PG_PORT" "$db"
}

# ensure_test_database_url: exports TEST_DATABASE_URL, the server the tests
# create their databases on. One given in the environment is used as it is;
# otherwise the tests get a role of their own that may create databases.
ensure_test_database_url() {
    local pw
    if [ -n "${TEST_DATABASE_URL:-}" ]; then
        export TEST_DATABASE_URL
        return 0
    fi
    pw="$(ensure_pg_role "$TEST_DB_ROLE" CREATEDB)"
    export TEST_DATABASE_URL="postgres://$TEST_DB_ROLE:$pw@$PG_HOST:$PG_PORT/postgres"
}

# ensure_test_nats_url: exports TEST_NATS_URL, the NATS server the tests
# connect to (test_support::nats_url): one given in the environment is used
# as it is; otherwise the server ensure_nats runs.
ensure_test_nats_url() {
    export TEST_NATS_URL="${TEST_NATS_URL:-nats://$NATS_HOST:$NATS_PORT}"
}

# test_psql PSQL_ARGS...: psql on TEST_DATABASE_URL (a postgres:// URL with
# a user and a host, as ensure_test_database_url makes); the password goes
# through the environment, not the command line.
test_psql() {
    local re='^postgres(ql)?://([^:@/?]+)(:([^@/?]*))?@([^:/?]+)(:([0-9]+))?/([^?]*)$'
    [[ "$TEST_DATABASE_URL" =~ $re ]] ||
        die "TEST_DATABASE_URL is not of the form postgres://user[:password]@host[:port]/database"
    local pw="${BASH_REMATCH[4]}"
    PGPASSWORD="$(printf '%b' "${pw//%/\\x}")" psql -h "${BASH_REMATCH[5]}" -p "${BASH_REMATCH[7]:-5432}" \
        -U "${BASH_REMATCH[2]}" -d "${BASH_REMATCH[8]:-postgres}" -w -X -q "$@"
}

# test_database_url DATABASE: TEST_DATABASE_URL with another database.
test_database_url() {
    printf '%s/%s\n' "${TEST_DATABASE_URL%/*}" "$1"
}

# --------------------------------------------------------------------------
# NATS with JetStream
# --------------------------------------------------------------------------
nats_bin() {
    if [ -x /usr/sbin/nats-server ]; then
        echo /usr/sbin/nats-server
    else
        command -v nats-server 2>/dev/null || true
    fi
}

# The INFO line a NATS server sends first on every connection, or failure.
nats_info() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        printf "%s\n" "$line"' _ "$NATS_HOST" "$NATS_PORT" 2>/dev/null
}

nats_up() { nats_info | grep -q '^INFO '; }
nats_js_up() { nats_info | grep -q '"jetstream":true'; }

ensure_nats() {
    local bin store logfile pidfile
    bin="$(nats_bin)"
    if [ -z "$bin" ]; then
        log "nats-server is not installed; installing it from Debian's packages"
        apt_install nats-server
        bin="$(nats_bin)"
        [ -n "$bin" ] || die "nats-server still not found after installing it"
    fi
    if nats_up; then
        nats_js_up ||
            die "a NATS server answers on $NATS_HOST:$NATS_PORT but JetStream is off; restart it with -js"
        log "NATS with JetStream is running on $NATS_HOST:$NATS_PORT"
        return 0
    fi

    if is_root; then
        store="${NATS_STORE_DIR:-/var/lib/nats-server}"
        logfile="${NATS_LOG_FILE:-/var/log/nats-server.log}"
        pidfile="${NATS_PID_FILE:-/run/bedolaga-nats-server.pid}"
    else
        store="${NATS_STORE_DIR:-$BEDOLAGA_REPO_ROOT/.local/nats/store}"
        logfile="${NATS_LOG_FILE:-$BEDOLAGA_REPO_ROOT/.local/nats/nats-server.log}"
        pidfile="${NATS_PID_FILE:-$BEDOLAGA_REPO_ROOT/.local/nats/nats-server.pid}"
    fi
    mkdir -p "$store" "$(dirname "$logfile")" "$(dirname "$pidfile")"
    log "starting nats-server with JetStream on $NATS_HOST:$NATS_PORT (store $store, log $logfile)"
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$pidfile" \
        --exec "$bin" -- -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$store" -l "$logfile" >&2 ||
        die "start-stop-daemon could not start $bin"
    wait_until "nats" "$SERVICE_WAIT_SECS" nats_up ||
        die "nats-server does not answer on $NATS_HOST:$NATS_PORT after ${SERVICE_WAIT_SECS}s; see $logfile"
    nats_js_up || die "nats-server on $NATS_HOST:$NATS_PORT started without JetStream; see $logfile"
    log "NATS with JetStream is running on $NATS_HOST:$NATS_PORT"
}

# Everything the tests and the local run need.
ensure_backing_services() {
    ensure_postgres
    ensure_nats
}

# Tests name their streams EVENTS_t<uuid> / DEADLETTER_t<uuid> and delete
# them when they finish; a test that fails or is interrupted leaves its
# streams behind. Remove such leftovers before a run (needs nats-py; skipped
# without it). Do not run this while another test run is using the server.
prune_test_streams() {
    command -v python3 >/dev/null 2>&1 || return 0
    python3 -c 'import nats' >/dev/null 2>&1 || return 0
    NATS_URL="${TEST_NATS_URL:-nats://$NATS_HOST:$NATS_PORT}" python3 - <<'PY' || warn "could not prune leftover test streams"
import asyncio, os, re
import nats

async def main():
    nc = await nats.connect(os.environ["NATS_URL"])
    try:
        js = nc.jetstream()
        pattern = re.compile(r"(EVENTS|DEADLETTER)_t[0-9a-f]{32}")
        gone = 0
        for info in await js.streams_info():
            if pattern.fullmatch(info.config.name):
                await js.delete_stream(info.config.name)
                gone += 1
        if gone:
            print(f"[bedolaga] removed {gone} leftover test streams")
    finally:
        await nc.close()

asyncio.run(main())
PY
}

# Tools the tests use: nats-py (the Python publisher example's test) and
# Chromium (the gateway console's browser test) are optional: failing to
# install them is a warning, and those tests then say they were skipped.
# Schemathesis (deploy/schemathesis.sh) is required, and so are the Python
# package cryptography (webhook-client checks its ed25519 signatures with
# it) and tinyproxy (webhook-client's egress proxy tests): without them
# those tests fail, saying what is missing.
# What the end-to-end fault tests need beyond the services: iptables, to
# cut a receiver off behind a silent network (the test skips, saying why,
# when it cannot add the rule).
ensure_e2e_tools() {
    if ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
        (apt_install iptables) || warn "could not install iptables; the blackhole test will be skipped"
    fi
}

ensure_test_tools() {
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        (apt_install chromium) || warn "could not install chromium; the console browser test will be skipped"
    fi
    if command -v python3 >/dev/null 2>&1; then
        if ! python3 -c 'import nats' >/dev/null 2>&1; then
            log "installing nats-py for the Python publisher example test"
            python3 -m pip install -q --disable-pip-version-check nats-py >/dev/null 2>&1 ||
                warn "could not install nats-py; its test will be skipped"
        fi
        if ! python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' >/dev/null 2>&1; then
            log "installing cryptography for the webhook-client ed25519 test"
            python3 -m pip install -q --disable-pip-version-check cryptography >/dev/null 2>&1 ||
                warn "could not install cryptography; the webhook-client ed25519 tests will fail"
        fi
    fi
    if ! command -v tinyproxy >/dev/null 2>&1 && [ ! -x /usr/bin/tinyproxy ]; then
        apt_install tinyproxy
    fi
    ensure_schemathesis >/dev/null
}

# The portal's browser suite (deploy/portal-test.sh): Debian's chromium and
# firefox-esr, and puppeteer-core from npm, pinned with every dependency by
# crates/webhook-registry/tests/portal/package-lock.json. `npm ci
# --ignore-scripts` installs it (no install script runs, and puppeteer-core
# downloads no browser) into a directory of its own next to the cargo target
# directory (kept between CI runs), in .local/ otherwise; it is installed
# again when the lockfile changes. Required: failing to install any of them
# is fatal there.
PORTAL_SUITE_DIR="$BEDOLAGA_REPO_ROOT/crates/webhook-registry/tests/portal"
puppeteer_dir() {
    if [ -n "${PUPPETEER_DIR:-}" ]; then
        printf '%s\n' "$PUPPETEER_DIR"
    elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
        case "$CARGO_TARGET_DIR" in
            /*) printf '%s\n' "$(dirname "$CARGO_TARGET_DIR")/node-portal" ;;
            *) printf '%s\n' "$(dirname "$BEDOLAGA_REPO_ROOT/$CARGO_TARGET_DIR")/node-portal" ;;
        esac
    else
        printf '%s\n' "$LOCAL_DIR/node-portal"
    fi
}

puppeteer_ok() {
    cmp -s "$PORTAL_SUITE_DIR/package-lock.json" "$1/package-lock.json" &&
        [ -f "$1/node_modules/puppeteer-core/package.json" ]
}

ensure_portal_test_tools() {
    local dir missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        missing+=(nodejs npm)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    dir="$(puppeteer_dir)"
    if ! puppeteer_ok "$dir"; then
        log "installing puppeteer-core (npm ci from $PORTAL_SUITE_DIR/package-lock.json) into $dir"
        mkdir -p "$dir"
        cp "$PORTAL_SUITE_DIR/package.json" "$PORTAL_SUITE_DIR/package-lock.json" "$dir/"
        npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error >&2 ||
            die "npm ci for the portal's browser suite failed in $dir"
        puppeteer_ok "$dir" || die "puppeteer-core is not in $dir after installing it"
    fi
}

# Schemathesis (PyPI), pinned, in its own virtualenv: next to the cargo
# target directory when CARGO_TARGET_DIR is set (kept between CI runs), in
# .local/ otherwise. An existing venv with the right version is reused.
SCHEMATHESIS_VERSION=4.32.5
schemathesis_venv() {
    if [ -n "${SCHEMATHESIS_VENV:-}" ]; then
        printf '%s\n' "$SCHEMATHESIS_VENV"
    elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
        case "$CARGO_TARGET_DIR" in
            /*) printf '%s\n' "$(dirname "$CARGO_TARGET_DIR")/venv-schemathesis" ;;
            *) printf '%s\n' "$(dirname "$BEDOLAGA_REPO_ROOT/$CARGO_TARGET_DIR")/venv-schemathesis" ;;
        esac
    else
        printf '%s\n' "$LOCAL_DIR/venv-schemathesis"
    fi
}

schemathesis_ok() {
    [ "$("$1/bin/schemathesis" --version 2>/dev/null)" = "schemathesis, version $SCHEMATHESIS_VERSION" ]
}

# ensure_schemathesis: prints the path of the schemathesis executable,
# installing it first when needed. Fatal on failure: the conformance run is
# part of the test command.
ensure_schemathesis() {
    local venv
    venv="$(schemathesis_venv)"
    if ! schemathesis_ok "$venv"; then
        command -v python3 >/dev/null 2>&1 || apt_install python3
        python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
        mkdir -p "$(dirname "$venv")"
        (
            # One installer at a time when runs share the venv.
            if command -v flock >/dev/null 2>&1; then flock 9; fi
            if ! schemathesis_ok "$venv"; then
                log "installing schemathesis==$SCHEMATHESIS_VERSION into $venv"
                rm -rf "$venv"
                python3 -m venv "$venv" >&2 &&
                    "$venv/bin/pip" install -q --disable-pip-version-check \
                        "schemathesis==$SCHEMATHESIS_VERSION" >&2
            fi
        ) 9>"$venv.lock" || die "could not install schemathesis==$SCHEMATHESIS_VERSION into $venv"
        schemathesis_ok "$venv" || die "$venv/bin/schemathesis is not version $SCHEMATHESIS_VERSION"
    fi
    printf '%s\n' "$venv/bin/schemathesis"
}

# The Python client's tests (clients/python): pytest with nats-py,
# SQLAlchemy and asyncpg, pinned, in a virtualenv beside the schemathesis
# one. An existing venv with exactly these pins is reused.
PYTHON_CLIENT_REQUIREMENTS="pytest==9.2.0 nats-py==2.16.0 SQLAlchemy==2.1.9 asyncpg==0.32.0 greenlet==3.5.6 websockets==17.4"
python_client_venv() {
    if [ -n "${PYTHON_CLIENT_VENV:-}" ]; then
        printf '%s\n' "$PYTHON_CLIENT_VENV"
    else
        printf '%s\n' "$(dirname "$(schemathesis_venv)")/venv-python-client"
    fi
}

# pinned_venv_ok DIR REQUIREMENTS: DIR is a venv installed with exactly these pins.
pinned_venv_ok() {
    [ -x "$1/bin/python" ] && [ "$(cat "$1/.bedolaga-requirements" 2>/dev/null)" = "$2" ]
}

# ensure_pinned_venv DIR REQUIREMENTS WHAT: installs the pinned PyPI
# packages into the virtualenv DIR unless it already has exactly them (one
# installer at a time when runs share it); fatal on failure.
ensure_pinned_venv() {
    local venv="$1" reqs="$2" what="$3"
    pinned_venv_ok "$venv" "$reqs" && return 0
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    mkdir -p "$(dirname "$venv")"
    (
        if command -v flock >/dev/null 2>&1; then flock 9; fi
        if ! pinned_venv_ok "$venv" "$reqs"; then
            log "installing $reqs into $venv"
            rm -rf "$venv"
            # shellcheck disable=SC2086 # the list is split on purpose
            python3 -m venv "$venv" >&2 &&
                "$venv/bin/pip" install -q --disable-pip-version-check $reqs >&2 &&
                printf '%s' "$reqs" >"$venv/.bedolaga-requirements"
        fi
    ) 9>"$venv.lock" || die "could not install $what into $venv"
    pinned_venv_ok "$venv" "$reqs" || die "$venv is incomplete"
}

# ensure_python_client_venv: prints the venv's directory, installing it
# first when needed; fails when python3 works but the install does not.
ensure_python_client_venv() {
    local venv
    venv="$(python_client_venv)"
    ensure_pinned_venv "$venv" "$PYTHON_CLIENT_REQUIREMENTS" "the Python client's test tools"
    printf '%s\n' "$venv"
}

# run_python_client_tests: pytest for clients/python against the local
# NATS and PostgreSQL, driving the binaries of this build (outbox-relay;
# webhook-registry, delivery-worker and gateway for the end-to-end module,
# found through BEDOLAGA_BIN_DIR).
# Without python3 it is skipped with a warning (nothing else can run it).
run_python_client_tests() {
    local venv relay
    if ! command -v python3 >/dev/null 2>&1; then
        warn "SKIPPED the Python client tests (clients/python): python3 is not installed"
        return 0
    fi
    venv="$(ensure_python_client_venv)"
    log "cargo build --workspace --bins (the services the Python client tests drive)"
    (cd "$BEDOLAGA_REPO_ROOT" && cargo build -q --workspace --bins) || die "cargo build failed"
    relay="$(cargo_target_dir)/debug/outbox-relay"
    log "pytest clients/python/tests"
    (
        cd "$BEDOLAGA_REPO_ROOT/clients/python" &&
            OUTBOX_RELAY_BIN="$relay" BEDOLAGA_BIN_DIR="$(cargo_target_dir)/debug" BEDOLAGA_REQUIRE_RELAY=1 \
                "$venv/bin/python" -m pytest -q -p no:cacheprovider -rs tests
    )
}

# promtool (deploy/validate-observability.sh): Debian's `prometheus`
# package ships it. Installed without recommends (no node exporter); the
# Prometheus server it brings is not started by this script.
ensure_promtool() {
    if ! command -v promtool >/dev/null 2>&1; then
        log "promtool is not installed; installing Debian's prometheus package for it"
        apt_install --no-install-recommends prometheus
        command -v promtool >/dev/null 2>&1 || die "promtool still not found after installing prometheus"
    fi
}

# Offline checks of the deploy files (deploy/validate-compose.sh,
# deploy/validate-k8s.sh, deploy/check-env.sh): PyPI tools, pinned, in a
# virtualenv beside the schemathesis one, and the KEDA and Prometheus
# operator CRD schemas from npm, pinned, in a directory beside it.
DEPLOY_CHECK_REQUIREMENTS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 dockerfile-parse==2.0.1 PyYAML==6.0.3"
DEPLOY_CHECK_NPM="@kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0"
deploy_check_venv() { printf '%s\n' "$(dirname "$(schemathesis_venv)")/venv-deploy-check"; }
deploy_check_node_dir() { printf '%s\n' "$(dirname "$(schemathesis_venv)")/node-deploy-check"; }

deploy_check_node_ok() {
    [ "$(cat "$1/.bedolaga-requirements" 2>/dev/null)" = "$DEPLOY_CHECK_NPM" ] &&
        [ -d "$1/node_modules/@kubernetes-models/keda" ] &&
        [ -d "$1/node_modules/@kubernetes-models/prometheus-operator" ]
}

# ensure_deploy_check_venv: prints the venv's directory, installing it
# first when needed. Fatal on failure: these checks are part of the test
# command.
ensure_deploy_check_venv() {
    local venv
    venv="$(deploy_check_venv)"
    ensure_pinned_venv "$venv" "$DEPLOY_CHECK_REQUIREMENTS" "the deploy checks' tools"
    printf '%s\n' "$venv"
}

# ensure_deploy_check_node: prints the directory holding the CRD models'
# node_modules, installing them first when needed.
ensure_deploy_check_node() {
    local dir
    dir="$(deploy_check_node_dir)"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    if ! deploy_check_node_ok "$dir"; then
        mkdir -p "$dir"
        (
            if command -v flock >/dev/null 2>&1; then flock 9; fi
            if ! deploy_check_node_ok "$dir"; then
                log "installing $DEPLOY_CHECK_NPM (npm) into $dir"
                # shellcheck disable=SC2086 # the list is split on purpose
                npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
                    $DEPLOY_CHECK_NPM >&2 &&
                    printf '%s' "$DEPLOY_CHECK_NPM" >"$dir/.bedolaga-requirements"
            fi
        ) 9>"$dir.lock" || die "npm install $DEPLOY_CHECK_NPM failed"
        deploy_check_node_ok "$dir" || die "$dir is incomplete"
    fi
    printf '%s\n' "$dir"
}

# ensure_kubectl: kubectl renders the kustomize overlays (its built-in
# kustomize); installed from the apt sources when missing.
ensure_kubectl() {
    if ! command -v kubectl >/dev/null 2>&1; then
        log "kubectl is not installed; installing it from the apt sources"
        apt_install kubectl
    fi
    command -v kubectl >/dev/null 2>&1 || die "kubectl not found after installing it"
}

# --------------------------------------------------------------------------
# Cargo helpers
# --------------------------------------------------------------------------
# The directory cargo builds into (honours CARGO_TARGET_DIR and
# .cargo/config.toml), as an absolute path.
cargo_target_dir() {
    local meta dir
    meta="$(cd "$BEDOLAGA_REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null)" || meta=""
    dir="$(printf '%s' "$meta" | grep -o '"target_directory":"[^"]*"' | head -n 1 | cut -d'"' -f4)"
    if [ -z "$dir" ]; then
        dir="${CARGO_TARGET_DIR:-target}"
        case "$dir" in /*) ;; *) dir="$BEDOLAGA_REPO_ROOT/$dir" ;; esac
    fi
    printf '%s\n' "$dir"
}

# --------------------------------------------------------------------------
# Local service processes (deploy/up.sh, deploy/down.sh)
# --------------------------------------------------------------------------
LOCAL_DIR="$BEDOLAGA_REPO_ROOT/.local"
RUN_DIR="$LOCAL_DIR/run"
LOG_DIR="$LOCAL_DIR/logs"

# pid_alive NAME: prints the pid recorded for NAME when that process still
# runs the NAME binary.
pid_alive() {
    local name="$1" pidfile="$RUN_DIR/$1.pid" pid exe
    [ -f "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: the process must run our binary.
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    case "$exe" in
        */"$name" | */"$name"" (deleted)") ;;
        *) return 1 ;;
    esac
    printf '%s\n' "$pid"
}

# stop_service NAME: SIGTERM the recorded process, wait up to 20 s, then SIGKILL.
stop_service() {
    local name="$1" pid i
    if ! pid="$(pid_alive "$name")"; then
        rm -f "$RUN_DIR/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name (pid $pid) did not stop within 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$RUN_DIR/$name.pid"
}

# start_service NAME BINARY [ARGS...]: run in the background with nohup.
start_service() {
    local name="$1" bin="$2"
    shift 2
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    [ -x "$bin" ] || die "$bin not found or not executable (did the build succeed?)"
    log "starting $name (log $LOG_DIR/$name.log)"
    nohup "$bin" "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$RUN_DIR/$name.pid"
}

# http_ok URL: true when URL answers 2xx.
http_ok() { curl -fs -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# tcp_open HOST:PORT: true when something accepts TCP connections there.
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}"' _ "$1" 2>/dev/null
}

# "0.0.0.0:8080" or "[::]:8080" -> "127.0.0.1:8080", for URLs the user can open.
bind_to_local() {
    local port="${1##*:}" host="${1%:*}"
    case "$host" in
        0.0.0.0 | "[::]" | "" | "*") host=127.0.0.1 ;;
    esac
    printf '%s:%s\n' "$host" "$port"
}

# --------------------------------------------------------------------------
# A scratch deployment for one scripted test run (deploy/schemathesis.sh,
# deploy/portal-test.sh): a database and a NATS prefix of its own (the
# tests' naming, EVENTS_t<uuid>, so prune_test_streams removes leftovers),
# a work directory for logs, and the processes it starts. scratch_begin
# installs an EXIT trap that stops them, shows the end of each log when the
# run failed, drops the database and deletes the streams.
SCRATCH_PIDS=()

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# scratch_begin NAME: sets SCRATCH_DB, SCRATCH_PREFIX, SCRATCH_WORK and
# exports DATABASE_URL, NATS_URL, NATS_PREFIX and SECRETS_KEY_FILE for the
# services.
scratch_begin() {
    local id
    id="$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
    SCRATCH_DB="${1}_${id}"
    SCRATCH_PREFIX="t${id}"
    SCRATCH_WORK="$(mktemp -d)"
    trap scratch_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    test_psql -c "CREATE DATABASE \"$SCRATCH_DB\"" >/dev/null || die "CREATE DATABASE $SCRATCH_DB failed"
    DATABASE_URL="$(test_database_url "$SCRATCH_DB")"
    export DATABASE_URL
    export NATS_URL="nats://$NATS_HOST:$NATS_PORT"
    export NATS_PREFIX="$SCRATCH_PREFIX"
    # A key file of the run's own for the registry and the worker (one key,
    # the format of `webhook-registry secrets new-key`), gone with the rest.
    SECRETS_KEY_FILE="$SCRATCH_WORK/secrets.key"
    (umask 077 && python3 -c 'import base64, os; print("scratch", base64.b64encode(os.urandom(32)).decode())' \
        >"$SECRETS_KEY_FILE") || die "could not write $SECRETS_KEY_FILE"
    export SECRETS_KEY_FILE
    unset WEB_API_DEFAULT_TOKEN WEB_API_TOKEN_HMAC_SECRET WEB_API_TOKEN_HASH_ALGORITHM BOT_DATABASE_URL
}

# scratch_spawn LOG BINARY [ARGS...]: runs it in the background, its output
# in $SCRATCH_WORK/LOG.log.
scratch_spawn() {
    local name="$1"
    shift
    "$@" >>"$SCRATCH_WORK/$name.log" 2>&1 </dev/null &
    SCRATCH_PIDS+=($!)
}

# scratch_wait_ready URL...: waits for each /readyz to answer 2xx.
scratch_wait_ready() {
    local url
    for url in "$@"; do
        wait_until "$url" "$SERVICE_WAIT_SECS" curl -fs -o /dev/null --max-time 2 "$url" ||
            die "$url is not ready after ${SERVICE_WAIT_SECS}s"
    done
}

scratch_delete_streams() {
    python3 -c 'import nats' >/dev/null 2>&1 || return 0
    PREFIX="$SCRATCH_PREFIX" python3 - <<'PY' || true
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

scratch_cleanup() {
    local status=$? pid f
    trap - EXIT INT TERM
    for pid in "${SCRATCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SCRATCH_PIDS[@]}"; do
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for f in "$SCRATCH_WORK"/*.log; do
            [ -s "$f" ] || continue
            warn "last lines of $(basename "$f"):"
            tail -n 20 "$f" >&2 || true
        done
    fi
    test_psql -c "DROP DATABASE IF EXISTS \"$SCRATCH_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
        warn "could not drop database $SCRATCH_DB"
    scratch_delete_streams
    rm -rf "$SCRATCH_WORK"
    exit "$status"
}

# --------------------------------------------------------------------------
# Docker (deploy/standins.sh, deploy/containers-test.sh)
# --------------------------------------------------------------------------
DOCKER_WAIT_SECS="${DOCKER_WAIT_SECS:-60}"

# Installs Debian's docker.io when there is no engine, and starts dockerd
# when none answers. The engine outlives the script, so its layer cache and
# images are reused by the next run.
ensure_docker() {
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        log "Docker is not installed; installing docker.io from Debian's packages"
        apt_install docker.io
    fi
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd (log: /var/log/bedolaga-dockerd.log)"
        as_root bash -c 'nohup dockerd >>/var/log/bedolaga-dockerd.log 2>&1 </dev/null &'
        wait_until "dockerd" "$DOCKER_WAIT_SECS" docker info ||
            die "dockerd did not answer within ${DOCKER_WAIT_SECS}s (see /var/log/bedolaga-dockerd.log)"
    fi
    ensure_compose_v2
}

# docker_build ARGS...: `docker build` with the legacy builder (BuildKit's
# Dockerfile front end would be pulled from a registry). The output goes to
# a file, shown (its end) only when the build fails.
docker_build() {
    local out
    out="$(mktemp)"
    if DOCKER_BUILDKIT=0 docker build "$@" >"$out" 2>&1; then
        rm -f "$out"
        return 0
    fi
    tail -n 60 "$out" >&2
    rm -f "$out"
    return 1
}

# `docker compose` (v2). Debian 12 ships only the old Python docker-compose
# 1.x, which does not read our compose files' `!reset` and `configs.content`;
# the next Debian release's docker-compose package is v2 and depends on
# libc6 alone, so it is taken from there, without adding that release to
# the machine's sources.
ensure_compose_v2() {
    docker compose version >/dev/null 2>&1 && return 0
    local tmp
    tmp="$(mktemp -d /var/tmp/bedolaga-compose.XXXXXX)"
    log "installing docker compose v2 (Debian trixie's docker-compose package)"
    echo "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" >"$tmp/trixie.list"
    mkdir -p "$tmp/lists/partial"
    local opts=(-o "Dir::Etc::sourcelist=$tmp/trixie.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$tmp/lists" -o "Debug::NoLocking=1")
    as_root apt-get "${opts[@]}" update -qq >&2 || die "apt-get update (trixie) failed"
    (cd "$tmp" && as_root apt-get "${opts[@]}" download docker-compose >&2) ||
        die "downloading docker-compose from trixie failed"
    as_root dpkg -i "$tmp"/docker-compose_*.deb >&2 || die "installing docker-compose failed"
    rm -rf "$tmp"
    docker compose version >/dev/null 2>&1 || die "docker compose v2 is still missing"
}

# Allow `deploy/lib.sh FUNCTION [ARGS]` for one-off use.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ "$#" -eq 0 ]; then
        echo "usage: $0 FUNCTION [ARGS...]   e.g. $0 ensure_backing_services" >&2
        exit 2
    fi
    "$@"
fi
