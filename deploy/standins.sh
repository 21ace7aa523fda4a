#!/usr/bin/env bash
# Stand-in base images for building and running our containers on a machine
# that reaches no image registry (Debian's package archive is enough).
#
#   deploy/standins.sh            make the missing ones
#   deploy/standins.sh --force    make them all again
#
# Each is tagged with exactly the name our files use, so `docker build` and
# `docker compose` find it locally and pull nothing. Made once, reused while
# present. What they are, and how they differ from the images of the same
# name: docs/operations.md, "Stand-in base images".
#
#   bedolaga-standin/debian:bookworm        debootstrap --variant=minbase, the base of the others
#   rust:1.95-bookworm                      that + gcc, make, git, and this machine's Rust 1.95 toolchain;
#                                           this machine's CA bundle is its system trust store
#   gcr.io/distroless/cc-debian12:nonroot   no shell: glibc, libgcc, libstdc++, CA certificates,
#                                           tzdata, user nonroot (65532)
#   postgres:15, postgres:15-alpine         Debian's PostgreSQL 15 behind the upstream entrypoint's
#                                           conventions (POSTGRES_USER/PASSWORD/DB, PGDATA, pg_isready)
#   nats:2.10                               Debian's nats-server (2.9) as the entrypoint
#   nginx:1.22                              Debian's nginx, configuration from /etc/nginx/conf.d
#   bedolaga-standin/bot:local              for the tests only: an HTTP server in place of the bot
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0
[ "${1:-}" = "--force" ] && force=1
ensure_docker

HERE="$BEDOLAGA_REPO_ROOT/deploy/standins"
BASE=bedolaga-standin/debian:bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# A stand-in carries the digest of the files it was made from (label
# bedolaga.standin): an image made from other files is made again.
digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
have() { # TAG [DIGEST]
    [ "$force" -eq 0 ] || return 1
    local label
    label="$(docker image inspect -f '{{index .Config.Labels "bedolaga.standin"}}' "$1" 2>/dev/null)" || return 1
    [ -z "${2:-}" ] || [ "$label" = "$2" ]
}

# build TAG DIR [CONTEXT [EXTRA]]: the Dockerfile in DIR; EXTRA goes into the digest.
build() {
    local tag="$1" dir="$2" ctx="${3:-$2}" d
    d="$(digest "$dir")${4:+-$4}"
    have "$tag" "$d" && return 0
    log "building stand-in $tag"
    docker_build --label "bedolaga.standin=$d" -f "$dir/Dockerfile" -t "$tag" "$ctx" ||
        die "building the stand-in $tag failed"
}

if ! have "$BASE"; then
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    root="$(mktemp -d /var/tmp/bedolaga-rootfs.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap --variant=minbase bookworm (from $MIRROR)"
    as_root debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null ||
        die "debootstrap failed (is $MIRROR reachable?)"
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    as_root tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE" >/dev/null || die "docker import failed"
    as_root rm -rf "$root"
    trap - EXIT
fi

# The builder: this machine's toolchain, as rustup installed it. Kept while
# present whatever its digest (every image build would start cold after
# making it again); `--force` makes it again.
if ! have rust:1.95-bookworm; then
    sysroot="$(rustc +1.95 --print sysroot 2>/dev/null || rustc --print sysroot)"
    case "$(rustc --version)" in
        "rustc 1.95."*) ;;
        *) die "the rust:1.95-bookworm stand-in needs this machine's Rust 1.95 (found: $(rustc --version))" ;;
    esac
    ctx="$(mktemp -d /var/tmp/bedolaga-rust.XXXXXX)"
    trap 'rm -rf "$ctx"' EXIT
    # Hard links where the file system allows it; no documentation.
    cp -al "$sysroot" "$ctx/toolchain" 2>/dev/null || cp -a "$sysroot" "$ctx/toolchain"
    rm -rf "$ctx/toolchain/share/doc"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    build rust:1.95-bookworm "$HERE/rust" "$ctx"
    rm -rf "$ctx"
    trap - EXIT
fi

build gcr.io/distroless/cc-debian12:nonroot "$HERE/distroless-cc"
build postgres:15 "$HERE/postgres"
docker tag postgres:15 postgres:15-alpine
build nats:2.10 "$HERE/nats"
build nginx:1.22 "$HERE/nginx"
build bedolaga-standin/bot:local "$HERE/bot"
log "stand-in images ready"
