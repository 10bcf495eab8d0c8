#!/usr/bin/env bash
# The offline checks of deploy/: Kubernetes and CRD schema validation of every manifest (deploy/check.py), the
# CRD schemas against the packages they come from, yamllint, `promtool check rules` on every rule file and on
# the dashboard's queries, and `promtool test rules`. Installs kubernetes-validate, yamllint and the schemas'
# source packages into a venv under ~/.cache/ferroserve once (PyPI); promtool comes from Debian's prometheus
# package. About 5 s after the first run (whose install took 17 s here).
set -euo pipefail
DEPLOY="$(cd "$(dirname "$0")" && pwd)"
source "$DEPLOY/venv.sh"
command -v promtool >/dev/null || { echo "promtool is missing: apt-get install prometheus" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
# check NAME COMMAND...: runs one check and counts it.
check() {
    local name="$1"
    shift
    printf '== %s\n' "$name"
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name" >&2; fi
}

schemas_match() {
    local definitions schema
    definitions="$("$VENV/bin/python" -c 'import kubernetes_validate, pathlib; print(pathlib.Path(kubernetes_validate.__file__).parent)')"
    definitions="$definitions/kubernetes-json-schema/v1.33.0-local-strict/_definitions.json"
    "$VENV/bin/python" "$DEPLOY/schemas/generate.py" "$KSERVE_WHEEL" "$TMP/schemas" "$definitions" || return 1
    for schema in "$TMP"/schemas/*.json; do
        diff -q "$schema" "$DEPLOY/schemas/$(basename "$schema")" \
            || { echo "deploy/schemas/$(basename "$schema") differs from generate.py's output" >&2; return 1; }
    done
}

# From deploy/, where .yamllint.yml's ignore paths start.
yamllint_deploy() { (cd "$DEPLOY" && "$VENV/bin/yamllint" --strict -c .yamllint.yml .); }

dashboard_parses() {
    promtool check rules "$TMP/dashboard-rules.yml" >/dev/null || { echo "a dashboard query does not parse" >&2; return 1; }
}

check "CRD schemas are what their packages give" schemas_match
check "Kubernetes manifests, custom resources, autoscaling names" \
    "$VENV/bin/python" "$DEPLOY/check.py" --dashboard-rules "$TMP/dashboard-rules.yml"
check "yamllint" yamllint_deploy
check "promtool check rules" promtool check rules "$DEPLOY"/prometheus/*.yml
check "promtool check rules on the dashboard's queries" dashboard_parses
check "promtool test rules" promtool test rules "$DEPLOY"/prometheus/tests/*.test.yml

echo "deploy/check.sh: $passed passed, $failed failed"
((failed == 0))
