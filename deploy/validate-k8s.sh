#!/usr/bin/env bash
# Validate the Kubernetes manifests offline, without a cluster. Each
# kustomization (deploy/k8s/base and every deploy/k8s/overlays/*) is
# rendered with `kubectl kustomize`, then:
#   1. kubernetes-validate --strict (PyPI): every built-in kind against the
#      Kubernetes API schemas of 1.29 (the oldest release supported) and of
#      the newest the tool ships; unknown fields are errors;
#   2. deploy/checks/check_k8s.py: what a schema cannot say (non-root and
#      read-only pods, probes on the right ports, references between
#      objects, secrets only from Secrets);
#   3. deploy/checks/crds.mjs: custom resources (KEDA ScaledObject,
#      Prometheus operator ServiceMonitor) against their CRDs' schemas (npm
#      packages of kubernetes-models).
# Then copies broken on purpose must be refused by each of the three, so a
# check that stopped checking fails here too.
# Only parsed as YAML: deploy/k8s/nats/values.yaml (values for the NATS
# Helm chart: no Helm in the package registries to render it) and
# deploy/k8s/postgres/cluster.yaml (a CloudNativePG example: no package
# registry ships that CRD's schema).
#   deploy/validate-k8s.sh [KUSTOMIZATION_DIR...]
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

ensure_kubectl
venv="$(ensure_deploy_check_venv)"
node_dir="$(ensure_deploy_check_node)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "$#" -eq 0 ]; then
    set -- deploy/k8s/base deploy/k8s/overlays/*/
fi

# check_rendered FILE: the three checks on one rendered file; non-zero when
# any refuses it.
check_rendered() {
    local file="$1" status=0 crds="${1%.yaml}.crds.json"
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k 1.29.0 "$file" || status=1
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$file" || status=1
    "$venv/bin/python" deploy/checks/check_k8s.py "$file" --crd-json "$crds" || status=1
    if [ -s "$crds" ]; then
        node deploy/checks/crds.mjs "$node_dir" "$crds" 2>"$crds.log" || {
            cat "$crds.log" >&2
            status=1
        }
    fi
    return "$status"
}

# must_refuse NAME FILE SED_EXPR: a copy of FILE changed by SED_EXPR must
# fail check_rendered.
must_refuse() {
    local name="$1" file="$2" broken="$work/broken-$1.yaml"
    sed -e "$3" "$file" >"$broken"
    if cmp -s "$file" "$broken"; then
        warn "self-test '$name': the change did not apply to $file"
        return 1
    fi
    if check_rendered "$broken" >/dev/null 2>&1; then
        warn "self-test '$name': a broken manifest was accepted"
        return 1
    fi
    log "self-test '$name': refused, as it should be"
}

status=0
n=0
"$venv/bin/python" -c 'import sys, yaml
for f in sys.argv[1:]:
    assert list(yaml.safe_load_all(open(f, encoding="utf-8"))), f + " is empty"' \
    deploy/k8s/nats/values.yaml deploy/k8s/postgres/cluster.yaml || status=1
for dir in "$@"; do
    dir="${dir%/}"
    out="$work/rendered/$dir.yaml"
    mkdir -p "$(dirname "$out")"
    n=$((n + 1))
    if ! kubectl kustomize "$dir" >"$out"; then
        warn "kubectl kustomize $dir failed"
        status=1
        continue
    fi
    if check_rendered "$out"; then
        log "$dir: $(grep -c '^kind:' "$out") objects valid"
    else
        warn "$dir: invalid (see above)"
        status=1
    fi
done

# The self-tests, on the production overlay when there is one (it has
# every kind of object), else on the last rendering.
last="$work/rendered/deploy/k8s/overlays/production.yaml"
[ -f "$last" ] || last="$(find "$work/rendered" -name '*.yaml' 2>/dev/null | sort | tail -n 1 || true)"
if [ -n "$last" ]; then
    must_refuse schema "$last" '0,/containerPort: \([0-9]*\)/s//containerPort: "port-\1"/' || status=1
    must_refuse rules "$last" '0,/readOnlyRootFilesystem: true/s//readOnlyRootFilesystem: false/' || status=1
    must_refuse key-file "$last" '0,/value: \/keys\/secrets.key/s//value: \/tmp\/secrets.key/' || status=1
    if grep -q '^kind: ScaledObject' "$last"; then
        must_refuse crd "$last" 's/minReplicaCount: \([0-9]*\)/minReplicaCount: "\1"/' || status=1
    fi
fi

if [ "$status" -eq 0 ]; then
    log "Kubernetes manifests: $n kustomizations valid"
fi
exit "$status"
