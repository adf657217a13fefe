#!/usr/bin/env bash
# Installs the system packages the test suite runs for real: Debian's redis-server (the fleet
# tests start their own instance on a free loopback port) and prometheus for promtool (the
# alert rules are checked with it). Idempotent and quiet when all is there. Run by .ci/run,
# and by the fleet tests when redis-server is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "tests need: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # The packages start system services; the tests start their own instances.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now redis-server prometheus >/dev/null 2>&1 || true
  fi
fi
