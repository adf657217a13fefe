#!/usr/bin/env bash
# Creates target/py-venv with the official `openai` package (tests/python/requirements.txt).
# Idempotent: does nothing when the venv already has the pinned version. Run by .ci/run, and by
# tests/openai_sdk.rs when the venv is missing. Prints the venv's python path last.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$root/tools/venv.sh" "$root/target/py-venv" "$root/tests/python/requirements.txt"
