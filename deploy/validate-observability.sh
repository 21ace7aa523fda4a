#!/usr/bin/env bash
# Validate the Prometheus files under deploy/observability/ offline with
# promtool (installed from Debian's prometheus package when missing): the
# configuration, the alert rules, and the rules' unit tests
# (prometheus/rules-test.yml). The dashboard and the rules' metric names
# are checked against the running services by `cargo test -p observability`.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT/deploy/observability/prometheus"

ensure_promtool
log "promtool check config prometheus.yml"
promtool check config prometheus.yml
log "promtool check rules rules/*.yml"
promtool check rules rules/*.yml
log "promtool test rules rules-test.yml"
promtool test rules rules-test.yml
