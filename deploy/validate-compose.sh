#!/usr/bin/env bash
# Validate docker-compose.yml against the Compose Specification's JSON Schema,
# offline (no Docker engine needed): check-jsonschema (PyPI, pinned in the
# deploy checks' virtualenv, see lib.sh) ships the schema. That every
# variable it sets is one its service accepts is deploy/check-env.sh.
#   deploy/validate-compose.sh [FILE...]     (default: docker-compose.yml)
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BEDOLAGA_REPO_ROOT"

venv="$(ensure_deploy_check_venv)"
if [ "$#" -eq 0 ]; then
    set -- docker-compose.yml
fi
exec "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$@"
