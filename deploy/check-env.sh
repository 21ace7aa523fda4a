#!/usr/bin/env bash
# Every environment variable the deploy files set is one its service
# accepts: docker-compose.yml, the overlay beside the bot
# (deploy/beside-bot/docker-compose.events.yml), every rendered Kubernetes kustomization
# (deploy/k8s/base, deploy/k8s/overlays/*) and the Dockerfile's ENV, against
# the `[env: …]` names in the `--help` of the binaries built from this tree
# (deploy/checks/check_env.py). A copy of the compose file with a variable
# no service knows must be refused, so the check itself is checked.
#   deploy/check-env.sh
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

ensure_rust
ensure_kubectl
venv="$(ensure_deploy_check_venv)"
log "cargo build (the binaries whose --help lists their settings)"
cargo build -q --workspace --bins ||
    die "cargo build failed"
bin_dir="$(cargo_target_dir)/debug"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

rendered=()
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
    dir="${dir%/}"
    out="$work/rendered/$dir.yaml"
    mkdir -p "$(dirname "$out")"
    kubectl kustomize "$dir" >"$out" || die "kubectl kustomize $dir failed"
    rendered+=("$out")
done

status=0
"$venv/bin/python" deploy/checks/check_env.py --bin-dir "$bin_dir" \
    --compose docker-compose.yml deploy/beside-bot/docker-compose.events.yml --k8s "${rendered[@]}" --dockerfile deploy/Dockerfile || status=1

# Self-test: a setting no service has, added to the gateway's environment.
sed -e 's/^\(      GATEWAY_BIND: .*\)$/\1\n      GATEWAY_NO_SUCH_SETTING: "1"/' docker-compose.yml >"$work/compose-broken.yml"
if cmp -s docker-compose.yml "$work/compose-broken.yml"; then
    warn "self-test: could not add a variable to the gateway in a copy of docker-compose.yml"
    status=1
elif "$venv/bin/python" deploy/checks/check_env.py --bin-dir "$bin_dir" \
    --compose "$work/compose-broken.yml" 2>"$work/self-test.log" ||
    ! grep -qF 'GATEWAY_NO_SUCH_SETTING is not a setting of' "$work/self-test.log"; then
    warn "self-test: an unknown variable in docker-compose.yml was not refused"
    status=1
else
    log "self-test: an unknown variable is refused, as it should be"
fi
exit "$status"
