#!/usr/bin/env bash
# Renders the chart and validates it against the Kubernetes schemas (deploy/helm/check.py),
# in target/deploy-venv, made from deploy/helm/requirements.txt when missing or stale.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python=$(bash "$root/tools/venv.sh" "$root/target/deploy-venv" "$root/deploy/helm/requirements.txt")
# Helm notes each symlinked file under files/ (they point at config/ and deploy/observability/).
"$python" "$root/deploy/helm/check.py" 2> >(grep -v 'found symbolic link in path' >&2)
