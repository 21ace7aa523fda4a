#!/usr/bin/env bash
# Validate docker-compose.yml against the Compose Specification's JSON Schema,
# offline (no Docker engine needed): check-jsonschema ships the schema.
#   deploy/validate-compose.sh [FILE...]     (default: docker-compose.yml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v check-jsonschema >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || {
        echo "[bedolaga] ERROR: python3 is needed to install check-jsonschema" >&2
        exit 1
    }
    echo "[bedolaga] installing check-jsonschema (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check check-jsonschema >&2
    # pip --user installs land here when site-packages is not writable.
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    export PATH
    command -v check-jsonschema >/dev/null 2>&1 || {
        echo "[bedolaga] ERROR: check-jsonschema installed but not on PATH" >&2
        exit 1
    }
fi

if [ "$#" -eq 0 ]; then
    set -- docker-compose.yml
fi
exec check-jsonschema --builtin-schema vendor.compose-spec "$@"
