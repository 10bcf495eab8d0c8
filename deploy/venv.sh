# Sourced by deploy/check.sh and deploy/live-test.sh: the Python tools of deploy/, pinned, in a venv under
# ~/.cache/ferroserve (installed from PyPI once, reused by every clone); sets VENV and KSERVE_WHEEL.
CACHE="${FERROSERVE_CACHE:-$HOME/.cache/ferroserve}"
KUBERNETES_VALIDATE=1.37.0
YAMLLINT=1.38.0
KSERVE=0.21.0
CLOUDCOIL_KEDA=2.16.1.0
VENV="$CACHE/venv-deploy-kv$KUBERNETES_VALIDATE-yl$YAMLLINT-keda$CLOUDCOIL_KEDA"
KSERVE_WHEEL="$CACHE/wheels/kserve-$KSERVE-py3-none-any.whl"

if [[ ! -f "$VENV/.stamp" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE" "yamllint==$YAMLLINT" \
        "cloudcoil.models.keda==$CLOUDCOIL_KEDA"
    touch "$VENV/.stamp"
fi
# The KServe SDK only as a file to read (its generated models), not installed with its server dependencies.
[[ -f "$KSERVE_WHEEL" ]] || "$VENV/bin/pip" download --quiet --no-deps "kserve==$KSERVE" -d "$(dirname "$KSERVE_WHEEL")"
