#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml against the Kubernetes API schemas (kubernetes-validate from PyPI,
# pinned; its schemas ship in the package, so no cluster or network beyond PyPI is needed), and
# checks that the validator does reject a broken manifest (so a pass means something).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/kubernetes-validate
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kubernetes-validate==1.37.0"
fi
KV="$VENV/bin/kubernetes-validate"
"$KV" --strict --quiet -k 1.30.0 deploy/k8s/*.yaml
broken=$(mktemp --suffix=.yaml)
trap 'rm -f "$broken"' EXIT
sed 's/containerPort: 8080/containerPort: "eighty"/' deploy/k8s/deployment.yaml > "$broken"
if "$KV" --strict --quiet -k 1.30.0 "$broken" >/dev/null 2>&1; then
    echo "validate-deploy: the validator accepted a broken manifest" >&2
    exit 1
fi
echo "deploy/k8s: valid against Kubernetes 1.30 (strict); a broken copy is rejected"
