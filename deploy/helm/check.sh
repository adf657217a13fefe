#!/usr/bin/env bash
# Renders the chart and validates it against the Kubernetes schemas (deploy/helm/check.py),
# in target/deploy-venv, created here from deploy/helm/requirements.txt when missing or stale.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/deploy-venv"
req="$root/deploy/helm/requirements.txt"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$stamp"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
fi
# Helm notes each symlinked file under files/ (they point at config/ and deploy/observability/).
"$venv/bin/python" "$root/deploy/helm/check.py" 2> >(grep -v 'found symbolic link in path' >&2)
