#!/usr/bin/env bash
# Creates target/py-venv with the official `openai` package (tests/python/requirements.txt).
# Idempotent: does nothing when the venv already has the pinned version. Run by .ci/run, and by
# tests/openai_sdk.rs when the venv is missing. Prints the venv's python path last.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/py-venv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$stamp"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
fi
echo "$venv/bin/python"
