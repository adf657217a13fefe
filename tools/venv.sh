#!/usr/bin/env bash
# venv.sh VENV REQUIREMENTS: makes (or refreshes) a Python venv with exactly these pinned
# requirements; does nothing when the venv already has them. Prints the venv's python.
set -euo pipefail
venv="$1"
req="$2"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$stamp"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
fi
echo "$venv/bin/python"
