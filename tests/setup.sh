#!/usr/bin/env bash
# Installs the system packages the test suite runs for real: Debian's redis-server (the fleet
# tests start their own instance on a free loopback port). Idempotent and quiet when all is
# there. Run by .ci/run, and by the fleet tests when redis-server is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "tests need: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # The package starts a system instance on 6379; the tests use their own.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
