#!/usr/bin/env bash
# The offline checks of deploy/: Kubernetes and CRD schema validation of every manifest (deploy/check.py), the
# CRD schemas against the packages they come from, yamllint, `promtool check rules` on every rule file and on
# the dashboard's queries, and `promtool test rules`. Installs kubernetes-validate, yamllint and the schemas'
# source packages into a venv under ~/.cache/ferroserve once (PyPI); promtool comes from Debian's prometheus
# package. About 10 s after the first run.
set -euo pipefail
DEPLOY="$(cd "$(dirname "$0")" && pwd)"
CACHE="${FERROSERVE_CACHE:-$HOME/.cache/ferroserve}"
KUBERNETES_VALIDATE=1.37.0
YAMLLINT=1.38.0
KSERVE=0.21.0
CLOUDCOIL_KEDA=2.16.1.0
VENV="$CACHE/venv-deploy-kv$KUBERNETES_VALIDATE-yl$YAMLLINT-keda$CLOUDCOIL_KEDA"
WHEELS="$CACHE/wheels"
KSERVE_WHEEL="$WHEELS/kserve-$KSERVE-py3-none-any.whl"

if [[ ! -f "$VENV/.stamp" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE" "yamllint==$YAMLLINT" \
        "cloudcoil.models.keda==$CLOUDCOIL_KEDA"
    touch "$VENV/.stamp"
fi
# The KServe SDK only as a file to read (its models), not installed with its server dependencies.
[[ -f "$KSERVE_WHEEL" ]] || "$VENV/bin/pip" download --quiet --no-deps "kserve==$KSERVE" -d "$WHEELS"
command -v promtool >/dev/null || { echo "promtool is missing: apt-get install prometheus" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0
step() { printf '== %s\n' "$*"; }

step "CRD schemas are what their packages give"
definitions="$("$VENV/bin/python" -c 'import kubernetes_validate, pathlib; print(pathlib.Path(kubernetes_validate.__file__).parent)')"
definitions="$definitions/kubernetes-json-schema/v1.33.0-local-strict/_definitions.json"
"$VENV/bin/python" "$DEPLOY/schemas/generate.py" "$KSERVE_WHEEL" "$TMP/schemas" "$definitions"
for schema in "$TMP"/schemas/*.json; do
    diff -q "$schema" "$DEPLOY/schemas/$(basename "$schema")" \
        || { echo "deploy/schemas/$(basename "$schema") differs from generate.py's output" >&2; status=1; }
done

step "Kubernetes manifests and custom resources"
"$VENV/bin/python" "$DEPLOY/check.py" --dashboard-rules "$TMP/dashboard-rules.yml" || status=1

step "yamllint"
(cd "$DEPLOY" && "$VENV/bin/yamllint" --strict -c .yamllint.yml .) || status=1

step "promtool check rules"
promtool check rules "$DEPLOY"/prometheus/*.yml || status=1
promtool check rules "$TMP/dashboard-rules.yml" >/dev/null || { echo "a dashboard query does not parse" >&2; status=1; }

step "promtool test rules"
promtool test rules "$DEPLOY"/prometheus/tests/*.test.yml || status=1

if ((status == 0)); then echo "deploy/check.sh: all checks passed"; else echo "deploy/check.sh: FAILED" >&2; fi
exit "$status"
